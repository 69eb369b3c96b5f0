"""The relearning attack on the micro model: the copy really trains (held-out MA rises), the
model under evaluation keeps its weights, mode and RNG stream, the split is deterministic and
disjoint, bad settings are refused in one line, and a disabled attack adds no key."""

import pytest
import torch

from conftest import micro_config
from trainables.config import UnlearnConfig, from_dict
from trainables.errors import InputError
from trainables.relearn import relearn_report, split_halves

# Every forget record shares the template, so relearning half of them raises MA on the other half.
ATTACK = {"enabled": True, "steps": 12, "lr": 3e-3, "batch_size": 4, "seed": 0}


def setup(micro_assets, **relearn):
    from trainables.data import load_datasets
    from trainables.models import configured_model, configured_tokenizer

    raw = micro_config(micro_assets)
    raw["eval"].update(relearn={**ATTACK, **relearn}, prefix_stride=16)  # EL on few prefixes: seconds
    cfg = from_dict(UnlearnConfig, raw)
    tokenizer = configured_tokenizer(cfg.model)
    data = load_datasets(cfg.data, tokenizer, need_retain=False)
    return cfg, tokenizer, data, configured_model(cfg.model).eval()


def test_split_is_seeded_disjoint_and_complete():
    a, b = split_halves(9, 3)
    assert (a, b) == split_halves(9, 3) and len(a) == 4 and len(b) == 5
    assert sorted(a + b) == list(range(9)) and not set(a) & set(b)
    assert split_halves(9, 4) != (a, b)
    with pytest.raises(InputError, match="needs at least 2"):
        split_halves(1, 0)


@pytest.mark.parametrize("lora", [False, True])
def test_relearning_raises_held_out_ma_and_leaves_the_model_untouched(micro_assets, lora):
    cfg, tokenizer, data, model = setup(micro_assets, lora=lora, lora_rank=4, lr=1e-2 if lora else 3e-3)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    out = relearn_report(model, tokenizer, data, cfg, "cpu")["relearn"]
    assert torch.equal(torch.rand(3), expected_next)  # the caller's RNG stream is where it was
    assert not model.training and all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert set(out) >= {"ma", "el3", "ma_before", "el3_before", "steps", "records"}
    assert out["records"] == len(data.forget) - len(data.forget) // 2 and out["steps"] == ATTACK["steps"]
    assert out["loss_last"] < out["loss_first"]
    assert out["ma"] > out["ma_before"] + 0.05, out
    # Before relearning, the figures are the evaluation's own on that half.
    from trainables.evaluate import _nanmean, _sequence_stats

    held = split_halves(len(data.forget), 0)[1]
    stats = _sequence_stats(model, data.forget, cfg.eval, held, progress=False)
    assert out["ma_before"] == pytest.approx(_nanmean(stats["ma"]))
    assert relearn_report(model, tokenizer, data, cfg, "cpu")["relearn"] == out  # deterministic


def test_a_disabled_attack_adds_no_key(micro_assets):
    from trainables.distributed import WorkerContext
    from trainables.relearn import relearn_in_workers

    cfg, tokenizer, data, model = setup(micro_assets, enabled=False)
    assert relearn_report(model, tokenizer, data, cfg, "cpu") == {}
    assert relearn_in_workers(model, tokenizer, data, cfg, WorkerContext.setup(False), retain=True) == {}


def test_the_loop_reports_the_attack_for_original_unlearned_and_retain_model(micro_assets):
    from trainables.distributed import WorkerContext
    from trainables.train_loop import Job, run_unlearning

    raw = micro_config(micro_assets, eval={"relearn": {**ATTACK, "steps": 2}},
                       method={"subset": {"policy": "reference", "reference_model": str(micro_assets / "reference"),
                                          "mode": "soft"}},
                       train={"max_steps": 2, "eval_every": 2})
    raw["eval"].update(prefix_stride=16, mia=False)
    cfg = from_dict(UnlearnConfig, raw)
    result = run_unlearning(cfg, WorkerContext.setup(False), None, log=lambda *a: None,
                            job=Job(evaluate_original=True, evaluate_final=True))
    before, after = result["evaluation"]["original"], result["evaluation"]["unlearned"]
    assert {"ma", "el3", "ma_before", "el3_before"} <= set(before["relearn"]) & set(after["relearn"])
    assert "relearn_retain" in before and "relearn_retain" not in after
    assert before["relearn"]["ma_before"] != before["relearn_retain"]["ma_before"]  # another model


@pytest.mark.parametrize("key, value, message", [
    ("steps", 0, "eval.relearn.steps: expected an integer >= 1, got 0"),
    ("lr", -1e-3, "eval.relearn.lr: expected a number > 0, got -0.001"),
    ("batch_size", 0, "eval.relearn.batch_size: expected an integer >= 1, got 0"),
    ("lora_rank", 0, "eval.relearn.lora_rank: expected an integer >= 1, got 0"),
    ("seed", -1, "eval.relearn.seed: expected an integer >= 0, got -1"),
    ("lora", "yes", "eval.relearn.lora: expected true or false, got 'yes'"),
    ("step", 3, "eval.relearn.step: unknown key"),
])
def test_bad_settings_are_refused_in_one_line(micro_assets, key, value, message):
    with pytest.raises(InputError) as err:
        from_dict(UnlearnConfig, micro_config(micro_assets, eval={"relearn": {"enabled": True, key: value}}))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_relearn_metrics_are_searchable_names():
    from trainables.metric_names import resolve

    for name in ("relearn.ma", "relearn.el3", "relearn.el10_before", "relearn.ma_before"):
        metric, ratio = resolve(name)
        assert metric.name == name and metric.direction == "min" and "eval.relearn.enabled" in metric.needs
    assert resolve("relearn.el3_ratio")[1]
