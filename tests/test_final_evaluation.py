"""The final evaluation is not run twice over one model: when training ends on an eval step and
that step is the one kept, its whole evaluation is both the step's watched figures and the
final report; when an earlier step is kept, the kept model is evaluated again; when step 0 (the
original weights) is kept, the original's evaluation is the final report."""

from __future__ import annotations

import pytest

from conftest import micro_config
from trainables.config import UnlearnConfig, from_dict


def _run(micro_assets, monkeypatch, last_score: float, middle_score: float = 0.5):
    import trainables.train_loop as loop
    from trainables.distributed import WorkerContext
    from trainables.evaluate import evaluate_model

    # Steps 0, 2, 4 are scored in turn; the last step is kept when its score is the lowest.
    scores = iter([1.0, middle_score, last_score])
    monkeypatch.setattr(loop, "selection_score", lambda *a: next(scores))
    calls: list[int] = []
    monkeypatch.setattr(loop, "evaluate_model", lambda *a, **k: calls.append(1) or evaluate_model(*a, **k))
    watched: list[int] = []
    real_watch = loop.watch_metrics
    monkeypatch.setattr(loop, "watch_metrics", lambda *a, **k: watched.append(1) or real_watch(*a, **k))
    cfg = from_dict(UnlearnConfig, micro_config(micro_assets, train={"max_steps": 4, "eval_every": 2}))
    result = loop.run_unlearning(cfg, WorkerContext.setup(False), None, log=lambda *a, **k: None,
                                 job=loop.Job(evaluate_original=True, evaluate_final=True))
    return cfg, result, len(calls), len(watched)  # the original is evaluated by evaluate_original


def test_the_kept_last_step_is_evaluated_once(micro_assets, monkeypatch):
    from trainables.evaluate import watch_from_report

    _, result, finals, watches = _run(micro_assets, monkeypatch, last_score=0.1)
    assert result["best_step"] == 4 and finals == 1 and watches == 1  # step 2 watched; step 4 evaluated
    after = result["evaluation"]["unlearned"]
    assert result["history"][-1] == {"step": 4, "loss": result["history"][-1]["loss"], **watch_from_report(after)}
    assert result["timings"]["final_eval_s"] > 0 and result["timings"]["watch_eval_s"] > 0


def test_an_earlier_kept_step_is_evaluated_again(micro_assets, monkeypatch):
    _, result, finals, _ = _run(micro_assets, monkeypatch, last_score=0.9)
    assert result["best_step"] == 2 and finals == 2  # the last step's model, then the kept one
    after = result["evaluation"]["unlearned"]
    step2 = next(h for h in result["history"] if h["step"] == 2)
    assert after["forget"]["ma"] == pytest.approx(step2["forget.ma"], abs=1e-12)
    assert after["retain"]["ppl"] == pytest.approx(step2["retain.ppl"], rel=1e-9)


def test_a_kept_step_0_reports_the_originals_evaluation(micro_assets, monkeypatch):
    """No step beats the original: the kept model is the original weights, whose evaluation (this
    run's, with the same settings) is the final report, not a second pass over the same model."""
    from trainables.evaluate import evaluation_key

    cfg, result, finals, _ = _run(micro_assets, monkeypatch, last_score=1.5, middle_score=1.5)
    assert result["best_step"] == 0 and finals == 1  # the last step's model only
    original, after = result["evaluation"]["original"], result["evaluation"]["unlearned"]
    assert original["evaluation_key"] == evaluation_key(cfg, cfg.train.seed)
    assert after == {k: v for k, v in original.items() if k != "evaluation_key"}
    assert after["forget"]["ma"] == result["history"][0]["forget.ma"]


def test_an_original_measured_otherwise_is_not_reused(micro_assets, monkeypatch):
    """A sweep's original is evaluated once with the base config; a trial that changes an eval
    setting (or the seed its MAUVE samples with) evaluates its kept step 0 itself."""
    import trainables.train_loop as loop
    from trainables.evaluate import evaluate_original

    real = evaluate_original
    monkeypatch.setattr(loop, "evaluate_original",
                        lambda *a, **k: {**real(*a, **k), "evaluation_key": "other settings"})
    _, result, finals, _ = _run(micro_assets, monkeypatch, last_score=1.5, middle_score=1.5)
    assert result["best_step"] == 0 and finals == 2  # the last step's model, then the original weights
    original, after = result["evaluation"]["original"], result["evaluation"]["unlearned"]
    assert after["forget"]["ma"] == pytest.approx(original["forget"]["ma"], abs=1e-12)
    assert after["retain"]["ppl"] == pytest.approx(original["retain"]["ppl"], rel=1e-9)


def test_the_originals_report_is_reused_whatever_cpus_it_ran_on(micro_assets):
    """A sweep evaluates its original on the idle CPUs of every trial slot (with_idle_cpus); the
    workers' resources set threads, not figures, so the key leaves them out; the workers'
    number (how the evaluation is sharded) stays in it."""
    import dataclasses

    from orchestrator.sweep import with_idle_cpus
    from trainables.evaluate import evaluation_key

    cfg = from_dict(UnlearnConfig, micro_config(micro_assets))
    wide = with_idle_cpus(cfg, concurrent_trials=2, cluster_cpus=8)
    assert wide.scaling.resources_per_worker == {"CPU": 2.0} and cfg.scaling.resources_per_worker == {}
    assert evaluation_key(wide, 0) == evaluation_key(cfg, 0) != evaluation_key(cfg, 1)
    ddp = dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, num_workers=2, strategy="ddp"))
    assert evaluation_key(ddp, 0) != evaluation_key(cfg, 0)
    # Never more than the cluster holds per worker, never less than a trial's; GPUs untouched.
    assert with_idle_cpus(ddp, concurrent_trials=4, cluster_cpus=5).scaling.resources_per_worker == {"CPU": 2.0}
    assert with_idle_cpus(cfg, concurrent_trials=2, cluster_cpus=0) is cfg
    assert with_idle_cpus(cfg, concurrent_trials=1, cluster_cpus=8) is cfg
    gpu = dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, use_gpu=True))
    assert with_idle_cpus(gpu, concurrent_trials=2, cluster_cpus=8) is gpu
