"""The training loop's stopping rules, evaluated at eval steps: held-out perplexity past a
factor, forget MA and EL_n under the unseen thresholds, and giving up on a run that is not
forgetting (train.stop_min_progress) or whose forgetting has stalled (train.stop_min_gain); a
stopped run still evaluates and reports its kept model."""

from __future__ import annotations

import pytest

from conftest import micro_config
from trainables.config import UnlearnConfig, from_dict
from trainables.errors import InputError

ORIGINAL = {"forget.ma": 0.98, "retain.ppl": 30.0, "forget.el3": 0.96}
THRESHOLDS = {"ma": 0.38, "el3": 0.10}


def _cfg(micro_assets, **train):
    return from_dict(UnlearnConfig, micro_config(micro_assets, train=train))


def test_progress_is_the_share_of_the_way_to_the_unseen_ma():
    from trainables.train_loop import forget_progress

    assert forget_progress({"forget.ma": 0.98}, ORIGINAL, THRESHOLDS) == 0.0
    assert forget_progress({"forget.ma": 0.68}, ORIGINAL, THRESHOLDS) == pytest.approx(0.5)
    assert forget_progress({"forget.ma": 0.30}, ORIGINAL, THRESHOLDS) > 1.0
    assert forget_progress({"forget.ma": 0.5}, {"forget.ma": 0.3}, THRESHOLDS) == 1.0  # nothing to forget


def test_a_run_that_is_not_forgetting_is_given_up_from_the_progress_step_on(micro_assets):
    from trainables.train_loop import should_stop

    cfg = _cfg(micro_assets, stop_min_progress=0.25, stop_progress_step=100)
    slow = {"forget.ma": 0.90, "retain.ppl": 30.0}  # 13% of the way
    assert should_stop(slow, ORIGINAL, THRESHOLDS, cfg, step=50) is None  # too early to judge
    assert should_stop(slow, ORIGINAL, THRESHOLDS, cfg, step=100) == (
        "forget MA came 13% of the way to the unseen set's by step 100 (train.stop_min_progress 0.25)")
    assert should_stop({**slow, "forget.ma": 0.80}, ORIGINAL, THRESHOLDS, cfg, step=200) is None  # 30%
    assert should_stop(slow, ORIGINAL, None, cfg, step=200) is None  # no unseen set: no thresholds
    ppl = _cfg(micro_assets, stop_min_progress=0.25, stop_ppl_factor=1.3)
    assert "perplexity" in should_stop({**slow, "retain.ppl": 40.0}, ORIGINAL, THRESHOLDS, ppl, step=100)
    assert should_stop(slow, ORIGINAL, THRESHOLDS, _cfg(micro_assets), step=400) is None  # rule off


def test_a_run_whose_forgetting_stalled_is_given_up(micro_assets):
    from trainables.train_loop import should_stop

    cfg = _cfg(micro_assets, stop_min_gain=0.05, stop_progress_step=100)
    at_100 = {"step": 100, "forget.ma": 0.77, "retain.ppl": 30.0}  # 35% of the way
    # gained 35% since step 0 (the first eval step's previous is the original)
    assert should_stop(at_100, ORIGINAL, THRESHOLDS, cfg, step=100, previous={"step": 0, **ORIGINAL}) is None
    stalled = {"step": 200, "forget.ma": 0.775, "retain.ppl": 28.0}  # a little back: -1%
    assert should_stop(stalled, ORIGINAL, THRESHOLDS, cfg, step=200, previous=at_100) == (
        "forget MA came -1% of the way to the unseen set's since step 100 (train.stop_min_gain 0.05)")
    slower = {"step": 200, "forget.ma": 0.73, "retain.ppl": 28.0}  # +7% (0.04 of the 0.60 gap)
    assert should_stop(slower, ORIGINAL, THRESHOLDS, cfg, step=200, previous=at_100) is None
    assert should_stop(stalled, ORIGINAL, THRESHOLDS, cfg, step=50, previous=at_100) is None  # too early
    assert should_stop(stalled, ORIGINAL, THRESHOLDS, cfg, step=200) is None  # nothing to compare with
    assert should_stop(stalled, ORIGINAL, None, cfg, step=200, previous=at_100) is None  # no unseen set
    assert should_stop(stalled, ORIGINAL, THRESHOLDS, _cfg(micro_assets), step=200, previous=at_100) is None


def test_bad_progress_settings_are_refused_naming_the_key(micro_assets):
    for values, message in (({"stop_min_progress": 0}, r"^train.stop_min_progress: expected a number in \(0, 1\]"),
                            ({"stop_min_progress": float("nan")}, r"^train.stop_min_progress: expected a number"),
                            ({"stop_min_gain": 1.5}, r"^train.stop_min_gain: expected a number in \(0, 1\]"),
                            ({"stop_min_gain": float("inf")}, r"^train.stop_min_gain: expected a number"),
                            ({"stop_progress_step": 0}, r"^train.stop_progress_step: expected an integer >= 1")):
        with pytest.raises(InputError, match=message):
            _cfg(micro_assets, **values)
    for key in ("stop_min_progress", "stop_min_gain"):
        plain = micro_config(micro_assets, train={key: 0.5})
        plain["data"]["unseen"] = None
        with pytest.raises(InputError, match=rf"^train.{key}: needs data.unseen"):
            from_dict(UnlearnConfig, plain)


def test_a_given_up_run_stops_at_its_eval_step_and_reports_its_kept_model(micro_assets):
    import trainables.train_loop as loop
    from trainables.distributed import WorkerContext

    # The micro model cannot come all the way to the unseen MA in 2 steps: given up at step 2.
    cfg = _cfg(micro_assets, stop_min_progress=1.0, stop_progress_step=1, max_steps=8, eval_every=2)
    result = loop.run_unlearning(cfg, WorkerContext.setup(False), None, log=lambda *a, **k: None,
                                 job=loop.Job(evaluate_original=True, evaluate_final=True))
    assert result["steps"] == 2 and "train.stop_min_progress 1" in result["stopped"]
    assert [h["step"] for h in result["history"]] == [0, 2]
    assert "forget.el3" not in result["history"][1]  # not stopping on thresholds: no EL in the watch
    assert set(result["evaluation"]) == {"original", "unlearned"}


def test_a_stalled_run_stops_at_the_eval_step_after_its_last_gain(micro_assets):
    import trainables.train_loop as loop
    from trainables.distributed import WorkerContext

    # The micro model cannot gain all of the way in 2 steps: given up at step 4, comparing with step 2.
    cfg = _cfg(micro_assets, stop_min_gain=1.0, stop_progress_step=3, max_steps=8, eval_every=2)
    result = loop.run_unlearning(cfg, WorkerContext.setup(False), None, log=lambda *a, **k: None,
                                 job=loop.Job(evaluate_original=True, evaluate_final=True))
    assert result["steps"] == 4 and "since step 2 (train.stop_min_gain 1)" in result["stopped"]
    assert [h["step"] for h in result["history"]] == [0, 2, 4]
    assert set(result["evaluation"]) == {"original", "unlearned"}
