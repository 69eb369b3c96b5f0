"""`undial study`: the learning-rate grid, the parsing and refusals of its inputs, the report's
verdict, `train.watch: full` in the training loop, and a reduced study end to end on the micro
model (2 methods x 2 lrs through Ray Tune + Ray Train, MLflow read back)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import micro_config
from orchestrator import study
from trainables.config import UnlearnConfig, from_dict
from trainables.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def study_config(root: Path) -> dict:
    """Micro config whose every eval step measures EL3, MA, MIA AUC, MAUVE and held-out ppl."""
    return micro_config(root, train={"lr": 1e-3, "max_steps": 4, "batch_size": 4, "eval_every": 2, "seed": 0,
                                     "log_every": 100},
                        eval={"el_n": [3], "prefix_stride": 8, "batch_size": 8, "mia": True,
                              "mauve": {"enabled": True, "max_prompts": 12, "prompt_tokens": 6, "new_tokens": 6}})


# --------------------------------------------------------------------------------------------
# The grid, parsing, refusals (no Ray)


@pytest.mark.parametrize("lr", [1e-3, 2.5e-5, 7.0])
def test_lr_grid_spans_ten_times_around_the_config_lr(lr):
    grid = study.lr_grid(lr)
    assert grid == pytest.approx([lr * 10 ** -0.5, lr, lr * 10 ** 0.5], rel=1e-12)
    assert grid[2] / grid[0] == pytest.approx(10.0)
    assert grid[1] / grid[0] == pytest.approx(grid[2] / grid[1])


def test_parse_methods_and_lrs():
    assert study.parse_methods(None) == ["undial", "gradient_ascent", "graddiff", "npo", "simnpo", "rmu"]
    assert study.parse_methods(" npo,undial ") == ["npo", "undial"]
    assert study.parse_lrs(None, 1e-3) == study.lr_grid(1e-3)
    assert study.parse_lrs("1e-4, 3e-4,1e-3", 1.0) == [1e-4, 3e-4, 1e-3]


@pytest.mark.parametrize("methods, lrs, message", [
    ("undial,sgd", None, "--methods: unknown method 'sgd' (choose from undial, finetune"),
    ("undial,undial", None, "--methods: a method is given twice"),
    (",", None, "--methods: expected a comma-separated list"),
    ("undial", "1e-3,0", "--lrs: expected comma-separated numbers > 0, got '0'"),
    ("undial", "1e-3,fast", "--lrs: expected comma-separated numbers > 0, got 'fast'"),
    ("undial", "1e-3,inf", "--lrs: expected comma-separated numbers > 0, got 'inf'"),
    ("undial", "1e-3,0.001", "--lrs: a learning rate is given twice"),
])
def test_parse_refusals_name_the_option(methods, lrs, message):
    with pytest.raises(InputError) as err:
        study.parse_methods(methods)
        study.parse_lrs(lrs, 1e-3)
    assert str(err.value).startswith(message)


def test_points_give_each_method_its_retain_term(micro_assets):
    base = from_dict(UnlearnConfig, study_config(micro_assets)).to_dict()  # retain_weight 0
    points = study.study_points(base, ["undial", "gradient_ascent", "graddiff", "rmu"], [1e-3, 3e-3])
    assert [(p["method.name"], p["train.lr"]) for p in points] == [
        (m, lr) for m in ("undial", "gradient_ascent", "graddiff", "rmu") for lr in (1e-3, 3e-3)]
    weights = {p["method.name"]: p["method.retain_weight"] for p in points}
    assert weights == {"undial": 0.0, "gradient_ascent": 0.0, "graddiff": 1.0, "rmu": 0.0}
    base["method"]["retain_weight"] = 0.5  # GA keeps no retain term (it would be GradDiff)
    weights = {p["method.name"]: p["method.retain_weight"] for p in study.study_points(
        base, ["undial", "gradient_ascent", "graddiff", "npo"], [1e-3])}
    assert weights == {"undial": 0.5, "gradient_ascent": 0.0, "graddiff": 0.5, "npo": 0.5}


def test_a_method_the_config_cannot_run_is_refused_in_one_line(micro_assets):
    base = from_dict(UnlearnConfig, study_config(micro_assets)).to_dict()
    base["lora"]["enabled"] = True
    with pytest.raises(InputError, match=r"^--methods: rmu \(lr 0.001\) gives an invalid run config: lora.enabled"):
        study.study_points(base, ["undial", "rmu"], [1e-3])


def test_study_base_watches_everything_unless_the_config_says(micro_assets, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(study_config(micro_assets)))
    assert study.load_study_base(str(path), [], False)["train"]["watch"] == "full"
    assert study.load_study_base(str(path), ["train.watch=light"], False)["train"]["watch"] == "light"
    with pytest.raises(InputError, match=r"^train.watch: expected one of 'light', 'full', got 'all'"):
        study.load_study_base(str(path), ["train.watch=all"], False)
    with pytest.raises(InputError, match="either CONFIG.yaml or --demo"):
        study.load_study_base(str(path), [], True)


def test_demo_study_runs_every_method_on_the_demo_config():
    base = study.load_study_base(None, ["train.lr=2e-3"], True)  # demo paths stay unresolved: no build
    assert (base["train"]["max_steps"], base["train"]["eval_every"], base["train"]["watch"]) == (200, 50, "full")
    assert base["model"]["name_or_path"] == "demo:model"
    lrs = study.parse_lrs(None, base["train"]["lr"])
    assert lrs == pytest.approx([2e-3 / 10 ** 0.5, 2e-3, 2e-3 * 10 ** 0.5])
    points = study.study_points(base, study.parse_methods(None), lrs)
    assert len(points) == 18 and len({(p["method.name"], p["train.lr"]) for p in points}) == 18


@pytest.mark.parametrize("argv, message", [
    (["--methods", "undial,sgd"], "error: --methods: unknown method 'sgd'"),
    (["--lrs", "1e-3,-1"], "error: --lrs: expected comma-separated numbers > 0, got '-1'"),
    (["train.lrr=1"], "error: train.lrr: unknown key"),
    (["--methods", "undial", "--max-concurrent", "0"], "error: --max-concurrent: expected an integer >= 1"),
])
def test_cli_refuses_bad_input_in_one_line_and_writes_nothing(micro_assets, tmp_path, capsys, argv, message):
    from orchestrator.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(study_config(micro_assets)))
    out = tmp_path / "out"
    assert main(["study", str(path), *argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_expected_eval_steps():
    assert study.expected_eval_steps(4, 2) == [0, 2, 4]
    assert study.expected_eval_steps(10, 4) == [0, 4, 8, 10]
    assert study.expected_eval_steps(3, 5) == [0, 3]


ORIGINAL = {"forget": {"el3": 0.9, "ma": 0.95}, "unseen": {"el3": 0.1, "ma": 0.4}, "retain": {"ppl": 30.0},
            "mia_auc": 0.99, "mauve": 0.5}


@pytest.mark.parametrize("el3, ma, ppl, reached, success", [
    (0.1, 0.4, 33.0, True, True),     # at the thresholds, ppl exactly +10%
    (0.05, 0.3, 33.3, True, False),   # forgot, but perplexity +11%
    (0.11, 0.3, 30.0, False, False),  # EL3 above the unseen set's
    (0.05, 0.41, 30.0, False, False),  # MA above
    (math.nan, 0.3, 30.0, False, False),  # a figure missing is not a success
])
def test_verdict(el3, ma, ppl, reached, success):
    after = {"forget": {"el3": el3, "ma": ma}, "retain": {"ppl": ppl}}
    v = study.verdict(after, ORIGINAL, 3)
    assert v["reaches_thresholds"] is reached and v["success"] is success
    assert v["retain_ppl_ratio"] == pytest.approx(ppl / 30.0)


def test_verdict_without_an_unseen_set():
    v = study.verdict({"forget": {"el3": 0.0, "ma": 0.0}, "retain": {"ppl": 30.0}},
                      {"forget": {"el3": 0.9, "ma": 0.9}, "retain": {"ppl": 30.0}}, 3)
    assert v["reaches_thresholds"] is None and v["success"] is None and v["ppl_within_10pct"] is True


def test_report_reads_relearn_and_privacy_keys_where_present(tmp_path):
    """The extras are whatever the final evaluations hold (relearn.*, privleak.*, mia.*); a
    study without them has no such table."""
    after = {**ORIGINAL, "forget": {"el3": 0.05, "ma": 0.3}, "relearn": {"unlearned": {"ma": 0.7, "el3": 0.5}},
             "privleak": {"loss": -12.0}, "mia": {"loss": 0.6}}
    records = [{"trial_id": "t1", "method": "undial", "lr": 1e-3, "status": "ok", "after": after,
                "mia_key": "mia_auc", "best_step": 4,
                "curve": [{"step": 0, "forget.ma": 0.95, "retain.ppl": 30.0}, {"step": 2, "forget.ma": 0.3,
                                                                              "retain.ppl": 31.0, "mauve": 0.4}],
                "losses": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]},
               {"trial_id": "t2", "method": "npo", "lr": 1e-3, "status": "failed", "error": "ValueError: boom"}]
    s = study.assemble("x", {"eval": {"el_n": [3, 10]}, "train": {"max_steps": 4, "eval_every": 2}},
                       ["undial", "npo"], [1e-3], ORIGINAL, records, 60.0)
    assert s["extra_keys"] == ["relearn.unlearned.ma", "relearn.unlearned.el3", "privleak.loss", "mia.loss"]
    assert s["trials"][0]["final"]["relearn.unlearned.ma"] == 0.7 and s["trials"][0]["final"]["success"] is True
    text = study.markdown_report(s)
    assert "| undial | 0.001 | ok | 4 | 0.050 | 0.300 |" in text
    assert "relearn.unlearned.ma" in text and "| npo | 0.001 | failed |" in text
    assert "- **undial**: 1 of 1 learning rates reach" in text and "failed: lr 0.001 (ValueError: boom)" in text
    png = study.plot_dynamics(s, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bare = study.assemble("y", {"eval": {"el_n": [3]}, "train": {}}, ["undial"], [1e-3], ORIGINAL,
                          [{**records[0], "after": ORIGINAL}], 1.0)
    assert bare["extra_keys"] == [] and "Relearning attack" not in study.markdown_report(bare)


def test_watch_full_records_the_whole_evaluation_and_restores_train_mode(micro_assets):
    """train.watch full: an eval step's figures are the whole evaluation, flattened (the same
    numbers evaluate_model reports); light: today's watched figures."""
    from types import SimpleNamespace

    from trainables.data import load_datasets
    from trainables.evaluate import Shard, evaluate_model, watch_metrics
    from trainables.models import configured_model, configured_tokenizer
    from trainables.train_loop import watched_figures
    from trainables.tree import numeric

    plain = study_config(micro_assets)
    plain["eval"].update(prefix_stride=40)  # fewer EL prefixes: a quicker evaluation, the same code
    plain["eval"]["mauve"]["enabled"] = False  # MAUVE along training: the end-to-end study below
    cfg = from_dict(UnlearnConfig, plain)
    tokenizer = configured_tokenizer(cfg.model)
    data = load_datasets(cfg.data, tokenizer, need_retain=False)
    model = configured_model(cfg.model)
    strategy = SimpleNamespace(eval_model=model)
    light = watched_figures(strategy, tokenizer, data, cfg, Shard(), 3, "cpu")
    assert light == watch_metrics(model, data, cfg.eval, Shard(), 3)
    full_cfg = from_dict(UnlearnConfig, {**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "watch": "full"}})
    model.train()
    full = watched_figures(strategy, tokenizer, data, full_cfg, Shard(), None, "cpu")
    assert model.training
    expected = numeric(evaluate_model(model, tokenizer, data, full_cfg.eval, seed=0, log=lambda *a: None))
    assert full == pytest.approx(expected, nan_ok=True)
    assert {"forget.el3", "forget.ma", "mia_auc", "unseen.ma", "retain.ppl"} <= set(full)
    assert watched_figures(strategy, tokenizer, data, full_cfg, Shard(), None, "cpu",
                           report={"forget": {"ma": 0.5}, "note": "x"}) == {"forget.ma": 0.5}


def test_the_light_watch_measures_el_once_forget_ma_is_under_its_threshold(micro_assets):
    """The stopping rule needs forget MA and EL_n both under the unseen thresholds: while MA is
    above its threshold the watch skips EL_n's generations; below it, EL_n is the same figure."""
    from types import SimpleNamespace

    from trainables.data import load_datasets
    from trainables.evaluate import Shard, watch_metrics
    from trainables.models import configured_model, configured_tokenizer
    from trainables.train_loop import should_stop, watched_figures

    plain = study_config(micro_assets)
    plain["eval"].update(prefix_stride=40)
    plain["train"].update(stop_when="threshold")
    cfg = from_dict(UnlearnConfig, plain)
    tokenizer = configured_tokenizer(cfg.model)
    data = load_datasets(cfg.data, tokenizer, need_retain=False)
    model = configured_model(cfg.model)
    strategy = SimpleNamespace(eval_model=model)
    every = watch_metrics(model, data, cfg.eval, Shard(), 3)
    ma = every["forget.ma"]
    above = watched_figures(strategy, tokenizer, data, cfg, Shard(), 3, "cpu", thresholds={"ma": ma, "el3": 1.0})
    assert above == {k: v for k, v in every.items() if k != "forget.el3"}  # MA not under: no EL
    assert should_stop(above, every, {"ma": ma, "el3": 1.0}, cfg) is None
    below = watched_figures(strategy, tokenizer, data, cfg, Shard(), 3, "cpu", thresholds={"ma": ma + 1e-6, "el3": 1.0})
    assert below == every
    assert "thresholds" in should_stop(below, every, {"ma": ma + 1e-6, "el3": every["forget.el3"] + 1e-6}, cfg)


# --------------------------------------------------------------------------------------------
# End to end: 2 methods x 2 lrs through Ray, MLflow read back


@pytest.fixture(scope="module")
def reduced_study(micro_assets, tmp_path_factory):
    from test_sweep import _kill_session

    tmp = tmp_path_factory.mktemp("study")
    path = tmp / "micro.yaml"
    path.write_text(yaml.safe_dump(study_config(micro_assets)))
    out = tmp / "micro-study"
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = dict(os.environ, UNDIAL_RAY_TMPDIR=ray_tmp, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = tmp / "study.log"
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "study", str(path), "--methods",
                                 "undial,gradient_ascent", "--lrs", "1e-3,3e-3", "--max-concurrent", "2",
                                 "--output", str(out)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=ROOT)
        try:
            rc = proc.wait(timeout=500)
        finally:
            if proc.poll() is None:
                _kill_session(proc, ray_tmp)
    return {"out": out, "rc": rc, "log": log_path.read_text(), "wall_s": time.time() - t0}


@pytest.mark.slow
def test_reduced_study_curves_report_and_plots(reduced_study):
    s = reduced_study
    assert s["rc"] == 0, s["log"][-4000:]
    data = json.loads((s["out"] / "study.json").read_text())
    assert [(t["method"], t["lr"]) for t in data["trials"]] == [
        ("undial", 1e-3), ("undial", 3e-3), ("gradient_ascent", 1e-3), ("gradient_ascent", 3e-3)]
    for t in data["trials"]:
        assert t["status"] == "ok", t
        assert [p["step"] for p in t["curve"]] == study.expected_eval_steps(4, 2) == [0, 2, 4]
        for point in t["curve"]:  # every eval step measured all five (train.watch full)
            assert {"forget.el3", "forget.ma", "mia_auc", "mauve", "retain.ppl"} <= set(point), point
        assert t["curve"][0]["forget.ma"] == data["original"]["forget.ma"]  # step 0: the one original evaluation
        assert [p["step"] for p in t["losses"]] == [1, 2, 3, 4]
        f = t["final"]
        assert all(f[k] is not None for k in ("forget.el3", "forget.ma", "mia_auc", "mauve", "retain.ppl"))
        assert isinstance(f["reaches_thresholds"], bool) and f["retain_ppl_ratio"] > 0
    ga = [t for t in data["trials"] if t["method"] == "gradient_ascent"]
    assert all(t["retain_weight"] == 0.0 for t in ga)
    original = json.loads((s["out"] / "original" / "metrics.json").read_text())["metrics"]
    assert data["thresholds"] == {"forget.el3": original["unseen"]["el3"], "forget.ma": original["unseen"]["ma"]}
    md = (s["out"] / "study.md").read_text()
    for t in data["trials"]:
        assert f"| {t['method']} | {t['lr']:.3g} | ok |" in md
    png = s["out"] / "plots" / "dynamics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    print(f"reduced study wall time: {s['wall_s']:.1f} s")


@pytest.mark.slow
def test_reduced_study_mlflow_parent_has_one_child_per_trial(reduced_study):
    from mlflow.tracking import MlflowClient

    s = reduced_study
    assert s["rc"] == 0, s["log"][-4000:]
    client = MlflowClient(f"sqlite:///{s['out'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name("micro-study")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("undial.kind") == "study"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and len(runs) == 5
    assert sorted(r.info.run_name for r in children) == sorted(
        f"{m} lr={lr}" for m in ("undial", "gradient_ascent") for lr in ("0.001", "0.003"))
    assert all(r.info.status == "FINISHED" for r in children + [parent])
    for child in children:  # the curve, per eval step, in each child run
        history = client.get_metric_history(child.info.run_id, "train.mauve")
        assert sorted(m.step for m in history) == [0, 2, 4]
        assert child.data.params["method.name"] == child.data.tags["study.method"]
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"study.json", "study.md", "plots"} <= top
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "plots")] == ["plots/dynamics.png"]
    assert parent.data.metrics["n_completed"] == 4
