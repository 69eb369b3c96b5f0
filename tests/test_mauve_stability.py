"""MAUVE a sweep can trust, through the evaluation's own path (trainables.evaluate.
generation_quality), on the tiny demo: over 5 sampling seeds the original model's MAUVE is
steady, and the human side's features, computed once and then read from the cache, give the
figures an uncached evaluation gives.

Whether MAUVE separates a degraded copy (held-out perplexity 1.3x) is measured on the full demo
by bench/mauve_stability.py (docs/demo.md: 825 samples per side, five k-means seeds averaged:
sd 0.014, the copy 5.8 sd lower). The tiny demo cannot show it: its 2-layer model, trained on 60 prose passages, sits at
MAUVE's floor (~0.01 for the original and the copy alike; measured)."""

from __future__ import annotations

import statistics
import warnings

import pytest
import torch

from bench.mauve_stability import copy_at_ppl_ratio, heldout_ppl, scores

SEEDS = list(range(5))


@pytest.fixture(scope="module")
def setup(tiny_demo, tmp_path_factory, monkeypatch_module):
    from trainables.config import UnlearnConfig, from_dict
    from trainables.data import load_datasets
    from trainables.evaluate import load_result_model
    from trainables.metrics import SmallSampleWarning
    from trainables.models import configured_tokenizer

    monkeypatch_module.setenv("UNDIAL_CACHE", str(tmp_path_factory.mktemp("undial-cache")))
    warnings.simplefilter("ignore", SmallSampleWarning)
    cfg = from_dict(UnlearnConfig, {
        "model": {"name_or_path": str(tiny_demo / "model")},
        "data": {k: str(tiny_demo / "data" / f"{k}.jsonl") for k in ("forget", "unseen", "retain", "heldout", "prompts")},
        "eval": {"mauve": {"max_prompts": 240, "do_sample": True}},
    })
    tokenizer = configured_tokenizer(cfg.model)
    data = load_datasets(cfg.data, tokenizer, need_retain=False)
    model = load_result_model(tiny_demo / "model")
    return cfg, tokenizer, data, model


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.slow
def test_mauve_is_steady_over_seeds_and_the_cache_changes_nothing(setup):
    from trainables import feature_cache

    cfg, tokenizer, data, model = setup
    features = feature_cache.cache_root() / "features"
    assert not list(features.glob("*.npy"))
    first = scores(model, tokenizer, data.prompts, cfg.eval, SEEDS[:1])  # featurises the human side
    assert len(list(features.glob("*.npy"))) == 1
    original = scores(model, tokenizer, data.prompts, cfg.eval, SEEDS)  # every seed from the cache
    assert original["mauve"][0] == first["mauve"][0] and original["mauve_star"][0] == first["mauve_star"][0]
    assert original["samples"] >= 150
    assert statistics.stdev(original["mauve"]) <= 0.02, original["mauve"]


def test_the_degraded_copy_has_the_asked_perplexity(setup):
    cfg, tokenizer, data, model = setup
    noisy, ratio = copy_at_ppl_ratio(model, data.heldout, 1.3)
    assert ratio == pytest.approx(1.3, abs=0.03)
    assert heldout_ppl(noisy, data.heldout) / heldout_ppl(model, data.heldout) == pytest.approx(ratio)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), noisy.parameters()))


def test_draws_average_independent_draws(setup):
    """eval.mauve.draws: `mauve` is the mean of the draws, each the one-draw evaluation at its own
    seed (seed + d * prompts), and `mauve_sd` their sample standard deviation."""
    import dataclasses

    from trainables.evaluate import generation_quality, split_passages

    cfg, tokenizer, data, model = setup
    mc = dataclasses.replace(cfg.eval.mauve, max_prompts=60)
    one = dataclasses.replace(cfg.eval, mauve=mc)
    three = dataclasses.replace(cfg.eval, mauve=dataclasses.replace(mc, draws=3))
    n = len(split_passages(tokenizer, data.prompts[:60], mc.prompt_tokens, mc.new_tokens)[0])
    singles = [generation_quality(model, tokenizer, data.prompts, one, seed=7 + d * n) for d in range(3)]
    got = generation_quality(model, tokenizer, data.prompts, three, seed=7)
    values = [s["mauve"] for s in singles]
    assert got["mauve"] == pytest.approx(statistics.mean(values), abs=1e-12)
    assert got["mauve_star"] == pytest.approx(statistics.mean(s["mauve_star"] for s in singles), abs=1e-12)
    assert got["mauve_sd"] == pytest.approx(statistics.stdev(values), abs=1e-12)
    assert got["mauve_draws"] == 3 and got["mauve_samples"] == singles[0]["mauve_samples"]
    assert len(set(values)) > 1  # the draws differ: each its own continuations
    assert "mauve_sd" not in singles[0]
