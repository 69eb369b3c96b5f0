"""Which examples each rank trains on: the forget batches and, beside them, the retain batches
(train.retain_batch_size sequences a step, in as many micro-batches as the forget batch)."""

from __future__ import annotations

import pytest

from conftest import micro_config
from trainables.config import UnlearnConfig, from_dict
from trainables.errors import InputError


def _train(**values):
    from trainables.config import TrainConfig

    return from_dict(TrainConfig, {"lr": 1e-3, "max_steps": 4, **values})


def test_the_default_retain_plan_is_the_forget_plans_shape():
    from trainables.train_loop import make_batch_plan, make_retain_plan

    tc = _train(batch_size=8, micro_batch_size=2)
    for rank in (0, 1):
        forget = make_batch_plan(32, tc, 2, rank)
        retain = make_retain_plan(100, tc, forget)
        assert (retain.batch_size, retain.micro_batch_size, retain.grad_accum) == (8, 2, 2)
        assert retain.seed == tc.seed + 1 and retain.num_examples == 100


def test_a_larger_retain_batch_is_split_like_the_forget_batch():
    from trainables.train_loop import make_batch_plan, make_retain_plan

    tc = _train(batch_size=4, micro_batch_size=1, retain_batch_size=12)
    plans = [make_retain_plan(50, tc, make_batch_plan(32, tc, 2, rank)) for rank in (0, 1)]
    for step in range(5):
        parts = [plan.micro_batches(step) for plan in plans]
        assert all(len(p) == 2 and all(len(m) == 3 for m in p) for p in parts)  # accum 2, 3 a forward
        seen = [i for p in parts for m in p for i in m]
        assert sorted(seen) == sorted(plans[0].global_batch(step)) and len(set(seen)) == 12


def test_a_retain_batch_that_does_not_split_is_refused_before_anything_runs(micro_assets):
    from trainables.preflight import preflight
    from trainables.train_loop import make_batch_plan, make_retain_plan

    tc = _train(batch_size=4, micro_batch_size=1, retain_batch_size=6)
    with pytest.raises(InputError, match=r"^train.retain_batch_size: 6 is not a multiple of the forget batch's "
                                         r"micro-batches \(4 = workers x gradient accumulation\)$"):
        make_retain_plan(50, tc, make_batch_plan(32, tc, 1, 0))
    cfg = from_dict(UnlearnConfig, micro_config(micro_assets, method={"retain_weight": 1.0},
                                                train={"batch_size": 4, "micro_batch_size": 1,
                                                       "retain_batch_size": 6}))
    with pytest.raises(InputError, match=r"^train.retain_batch_size: 6 is not a multiple"):
        preflight(cfg)
    with pytest.raises(InputError, match=r"^train.retain_batch_size: has no effect without a retain term"):
        from_dict(UnlearnConfig, micro_config(micro_assets, train={"retain_batch_size": 8}))


def test_the_retain_term_trains_on_retain_batch_size_sequences_a_step(micro_assets, monkeypatch):
    import trainables.train_loop as loop
    from trainables.distributed import WorkerContext

    sizes: list[int] = []
    real = loop._stack
    monkeypatch.setattr(loop, "_stack", lambda tset, idx, device: sizes.append(len(idx)) or real(tset, idx, device))
    cfg = from_dict(UnlearnConfig, micro_config(micro_assets, method={"retain_weight": 1.0},
                                                train={"batch_size": 4, "retain_batch_size": 8, "max_steps": 2,
                                                       "eval_every": 2}))
    result = loop.run_unlearning(cfg, WorkerContext.setup(False), None, log=lambda *a, **k: None)
    assert sizes == [4, 8, 4, 8]  # each step: the forget micro-batch, then its retain micro-batch
    assert result["steps"] == 2
