"""Privacy figures against a retain model (eval.retain_model): the config keys, the metric
names a search space may use, and evaluations on the micro assets (their `reference` model
plays the retain model): privleak per attack, forget_quality, the `ref` attack, the retain
model's section in the original's report, and absent (never zero) without a retain model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import micro_config
from trainables.config import EvalConfig, UnlearnConfig, from_dict
from trainables.errors import InputError


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _cfg(root, **eval_over) -> UnlearnConfig:
    return from_dict(UnlearnConfig, micro_config(root, eval={"el_n": [3], "mia": True, **eval_over},
                                                 train={"max_steps": 2, "eval_every": 2, "log_every": 100}))


# --------------------------------------------------------------------------- config

def test_config_attacks_and_refusals():
    assert EvalConfig().attacks() == ["loss", "zlib", "min_k", "min_k_pp"]
    assert EvalConfig(retain_model="x").attacks() == ["loss", "zlib", "min_k", "min_k_pp", "ref"]
    listed = from_dict(EvalConfig, {"mia_attacks": ["loss", "grad_norm"], "retain_model": "x"}, "eval")
    assert listed.attacks() == ["loss", "grad_norm"]
    for bad, key in (({"mia_attacks": ["loss", "lira"]}, "eval.mia_attacks"),
                     ({"mia_attacks": ["ref"]}, "eval.mia_attacks"),            # ref needs a retain model
                     ({"mia_attacks": ["loss", "loss"]}, "eval.mia_attacks"),
                     ({"mia_k": 0.0}, "eval.mia_k"), ({"mia_k": 1.5}, "eval.mia_k"),
                     ({"retain_model": " "}, "eval.retain_model")):
        with pytest.raises(InputError) as exc:
            from_dict(EvalConfig, bad, "eval")
        assert str(exc.value).startswith(f"{key}:") and "\n" not in str(exc.value)
    with pytest.raises(InputError, match="^eval.mia_attacks: grad_norm"):
        from_dict(UnlearnConfig, {"eval": {"mia_attacks": ["grad_norm"]},
                                  "scaling": {"strategy": "fsdp", "num_workers": 2}})


def test_demo_config_names_the_retain_model():
    from orchestrator.unlearn import DEMO_CONFIG
    from trainables.config import load_config, resolve_demo_paths

    cfg = load_config(DEMO_CONFIG)
    assert cfg.eval.retain_model == "demo:reference"
    resolved = resolve_demo_paths(cfg.to_dict(), __import__("pathlib").Path("/demo"))
    assert resolved["eval"]["retain_model"] == "/demo/reference"


# --------------------------------------------------------------------------- metric names

def test_metric_table_knows_the_privacy_metrics():
    from trainables.metric_names import resolve

    assert resolve("privleak")[0].name == "privleak.min_k"  # MUSE's PrivLeak attack
    assert resolve("privleak_abs")[0].name == "privleak_abs.min_k"
    assert resolve("mia_auc.loss")[0].name == "mia.loss"
    assert resolve("mia_auc.min_k_pp")[0].name == "mia.min_k_pp"
    fq = resolve("forget_quality")[0]
    assert (fq.direction, fq.low, fq.high, fq.worst()) == ("max", 0.0, 1.0, 0.0)
    leak = resolve("privleak.zlib")[0]
    assert leak.direction == "min" and leak.low == -1.0 and "eval.retain_model" in leak.needs
    assert resolve("privleak_abs.ref")[0].worst() is None
    assert resolve("mia_auc")[0].name == "mia_auc" and resolve("mia_auc_min_k")[0].name == "mia_auc_min_k"
    for bad in ("privleak.lira", "mia_auc.", "forget_quality.loss"):
        with pytest.raises(KeyError):
            resolve(bad)


def _space(root, retain: bool, objectives, constraints=(), **eval_over):
    from orchestrator.space import space_from_dict

    base = micro_config(root, eval={"mia": True, **({"retain_model": str(root / "reference")} if retain else {}),
                                    **eval_over})
    return space_from_dict({"name": "privacy", "base": base,
                            "parameters": {"method.gamma": {"distribution": "loguniform", "low": 1, "high": 50}},
                            "objectives": objectives, "constraints": list(constraints),
                            "budget": {"num_samples": 1}}, [], base_dir=root)


def test_space_may_name_privacy_objectives_and_constraints(micro_assets):
    space = _space(micro_assets, True, [{"name": "el3"}, {"name": "privleak_abs"}, {"name": "mia_auc.loss"}],
                   ["forget_quality >= 0.01", "privleak.min_k_pp <= 0.2", "privleak >= -0.2"])
    assert [(o.name, o.mode) for o in space.objectives] == [("el3", "min"), ("privleak_abs", "min"),
                                                            ("mia_auc.loss", "min")]
    assert [c.metric for c in space.constraints] == ["forget_quality", "privleak.min_k_pp", "privleak"]
    _space(micro_assets, True, [{"name": "forget_quality", "mode": "max"}, {"name": "mia_auc.ref"}])


@pytest.mark.parametrize("retain, objectives, constraints, expect", [
    (True, [{"name": "privleak.lira"}], [], "objectives[0].name: unknown metric 'privleak.lira'"),
    (False, [{"name": "privleak"}], [], "'privleak.min_k' needs eval.retain_model"),
    (False, [{"name": "el3"}], ["forget_quality >= 0.1"], "'forget_quality' needs eval.retain_model"),
    (False, [{"name": "mia_auc.ref"}], [], "needs ref in the base config's eval.mia_attacks"),
    (True, [{"name": "mia_auc.grad_norm"}], [], "needs grad_norm in the base config's eval.mia_attacks"),
])
def test_space_refuses_unmeasurable_privacy_names(micro_assets, retain, objectives, constraints, expect):
    with pytest.raises(InputError) as exc:
        _space(micro_assets, retain, objectives, constraints)
    assert expect in str(exc.value)


def test_objective_values_from_a_report():
    from orchestrator.objectives import metric_value

    after = {"privleak": {"min_k": -0.3, "loss": 0.1}, "privleak_abs": {"min_k": 0.3}, "forget_quality": 0.2,
             "mia": {"loss": 0.7}, "mia_auc": 0.7}
    assert metric_value("privleak", after, None) == -0.3
    assert metric_value("privleak_abs", after, None) == 0.3
    assert metric_value("mia_auc.loss", after, None) == 0.7
    assert metric_value("forget_quality", after, None) == 0.2
    assert math.isnan(metric_value("privleak.zlib", after, None))  # missing stays NaN, never 0


# --------------------------------------------------------------------------- evaluations

@pytest.fixture(scope="module")
def evaluated(micro_assets):
    """(config, data, original report with the retain section, a perturbed model's report)."""
    from trainables.data import load_datasets
    from trainables.evaluate import evaluate_model, evaluate_original, retain_for
    from trainables.models import load_causal_lm, load_tokenizer

    cfg = _cfg(micro_assets, retain_model=str(micro_assets / "reference"))
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    data = load_datasets(cfg.data, tokenizer, need_retain=False)
    model = load_causal_lm(cfg.model.name_or_path)
    quiet = lambda *a, **k: None  # noqa: E731
    original = evaluate_original(model, tokenizer, data, cfg, log=quiet)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(1)))
    after = evaluate_model(model, tokenizer, data, cfg.eval, retain=retain_for(cfg, original, tokenizer, data),
                           log=quiet)
    return cfg, data, original, after


def test_original_report_carries_the_retain_section(evaluated):
    cfg, data, original, _ = evaluated
    section = original["retain_model"]
    assert section["model"] == cfg.eval.retain_model
    assert {"ma", "el3", "ppl"} <= set(section["forget"]) and {"ma", "el3", "ppl"} <= set(section["unseen"])
    assert set(section["mia"]) == {"loss", "zlib", "min_k", "min_k_pp", "ref"}
    assert section["mia"]["ref"] == 0.5  # the retain model calibrated by itself
    assert len(section["forget_loss"]) == len(data.forget)
    assert len(section["scores"]["unseen"]["min_k_pp"]) == len(data.unseen)
    assert "privleak" not in section and "mauve" not in section


def test_privleak_and_forget_quality_follow_their_definitions(evaluated):
    from scipy.stats import ks_2samp

    from trainables.evaluate import _sequence_stats

    cfg, data, original, after = evaluated
    retain = original["retain_model"]
    for report in (original, after):
        assert set(report["mia"]) == {"loss", "zlib", "min_k", "min_k_pp", "ref"}
        assert report["mia"]["loss"] == report["mia_auc"] and report["mia"]["min_k"] == report["mia_auc_min_k"]
        for attack, auc in report["mia"].items():
            want = (auc - retain["mia"][attack]) / retain["mia"][attack]
            assert report["privleak"][attack] == pytest.approx(want)
            assert report["privleak_abs"][attack] == pytest.approx(abs(want))
        assert 0.0 <= report["forget_quality"] <= 1.0
    assert after["privleak"] != original["privleak"]
    # forget_quality: the KS p-value of the per-sequence mean forget NLLs
    from trainables.models import load_causal_lm

    model = load_causal_lm(cfg.model.name_or_path)
    stats = _sequence_stats(model.eval(), data.forget, cfg.eval, list(range(len(data.forget))), False)
    losses = np.asarray(stats["nll"]) / np.asarray(stats["tokens"])
    assert original["forget_quality"] == pytest.approx(ks_2samp(losses, retain["forget_loss"]).pvalue)


def test_absent_without_a_retain_model(micro_assets):
    from trainables.data import load_datasets
    from trainables.evaluate import evaluate_original, retain_for
    from trainables.models import load_causal_lm, load_tokenizer

    cfg = _cfg(micro_assets)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    data = load_datasets(cfg.data, tokenizer, need_retain=False)
    report = evaluate_original(load_causal_lm(cfg.model.name_or_path), tokenizer, data, cfg, log=lambda *a: None)
    assert not {"privleak", "privleak_abs", "forget_quality", "retain_model"} & set(report)
    assert set(report["mia"]) == {"loss", "zlib", "min_k", "min_k_pp"}  # no ref without a reference
    assert retain_for(cfg, report, tokenizer, data) is None


def test_retain_section_reused_only_when_it_fits(evaluated, micro_assets):
    import dataclasses

    from trainables.evaluate import retain_for

    cfg, data, original, _ = evaluated
    from trainables.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.name_or_path)
    assert retain_for(cfg, original, tokenizer, data) is original["retain_model"]
    other = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, mia_k=0.5))
    fresh = retain_for(other, original, tokenizer, data, log=lambda *a: None)
    assert fresh is not original["retain_model"] and fresh["mia_k"] == 0.5


def test_unlearning_run_reports_privacy_before_and_after(micro_assets):
    from orchestrator.unlearn import format_report
    from trainables.distributed import WorkerContext
    from trainables.train_loop import Job, run_unlearning

    cfg = _cfg(micro_assets, retain_model=str(micro_assets / "reference"), mia_attacks=["loss", "min_k", "ref"])
    lines: list[str] = []
    result = run_unlearning(cfg, WorkerContext.setup(False), None, log=lines.append,
                            job=Job(evaluate_original=True, evaluate_final=True))
    before, after = result["evaluation"]["original"], result["evaluation"]["unlearned"]
    assert sum("evaluating the retain model" in line for line in lines) == 1  # once, with the original
    for report in (before, after):
        assert set(report["privleak"]) == {"loss", "min_k", "ref"} and "forget_quality" in report
    assert "retain_model" in before and "retain_model" not in after
    table = format_report({"before": before, "after": after}).splitlines()
    assert table[0].split()[-1] == "retain"
    assert any(row.startswith("privleak.loss") for row in table)
    assert any(row.startswith("forget_quality") for row in table)
    el3 = next(row for row in table if row.startswith("forget.el3")).split()
    assert float(el3[-1]) == pytest.approx(before["retain_model"]["forget"]["el3"], abs=1e-4)
