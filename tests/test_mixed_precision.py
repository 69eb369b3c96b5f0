"""train.mixed_precision: "bf16" runs the training steps' forward passes under torch.autocast in
bfloat16; the weights, the optimiser and the losses stay float32, and every evaluation runs in
the model's own dtype."""

from __future__ import annotations

import pytest
import torch

from conftest import micro_config
from trainables.config import UnlearnConfig, from_dict
from trainables.errors import InputError


def _run(micro_assets, monkeypatch, precision: str) -> tuple[dict, list, list]:
    import trainables.train_loop as loop
    from trainables import methods
    from trainables.distributed import WorkerContext

    seen: list = []  # (logits dtype, loss dtype, loss) of each forget loss
    real = methods.UnDIAL.forget_loss

    def forget_loss(self, outputs, *args, **kwargs):
        loss = real(self, outputs, *args, **kwargs)
        seen.append((outputs.logits.dtype, loss.dtype, float(loss.detach())))
        return loss

    monkeypatch.setattr(methods.UnDIAL, "forget_loss", forget_loss)
    watched: list = []
    real_watch = loop.watch_metrics
    monkeypatch.setattr(loop, "watch_metrics", lambda model, *a, **k: watched.append(
        (torch.is_autocast_enabled("cpu"), next(model.parameters()).dtype)) or real_watch(model, *a, **k))
    cfg = from_dict(UnlearnConfig, micro_config(micro_assets, method={"retain_weight": 1.0},
                                                train={"max_steps": 4, "eval_every": 2, "mixed_precision": precision}))
    result = loop.run_unlearning(cfg, WorkerContext.setup(False), None, log=lambda *a, **k: None)
    monkeypatch.undo()  # the next run wraps the real methods, not this run's wrappers
    return result, seen, watched


def test_bf16_autocasts_the_forward_passes_and_keeps_the_rest_float32(micro_assets, monkeypatch):
    fp32, seen32, _ = _run(micro_assets, monkeypatch, "no")
    bf16, seen16, watched = _run(micro_assets, monkeypatch, "bf16")
    assert {s[0] for s in seen32} == {torch.float32}
    assert {s[0] for s in seen16} == {torch.bfloat16}  # the logits came out of autocast
    assert {s[1] for s in seen16} == {torch.float32}   # the loss did not
    # The same first step up to bfloat16's rounding (8 bits of mantissa), not another loss.
    assert seen16[0][2] == pytest.approx(seen32[0][2], rel=0.02)
    assert watched and all(not autocast and dtype == torch.float32 for autocast, dtype in watched)
    assert bf16["steps"] == fp32["steps"] == 4
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in bf16["history"][1:])


def test_bad_mixed_precision_settings_are_refused_naming_the_key(micro_assets):
    with pytest.raises(InputError, match=r"^train.mixed_precision: expected one of"):
        from_dict(UnlearnConfig, micro_config(micro_assets, train={"mixed_precision": "fp16"}))
    with pytest.raises(InputError, match=r"^train.mixed_precision: DeepSpeed sets its own precision"):
        from_dict(UnlearnConfig, micro_config(micro_assets, train={"mixed_precision": "bf16"},
                                              scaling={"strategy": "deepspeed", "num_workers": 2}))
