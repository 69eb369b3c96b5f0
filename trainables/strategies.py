"""The strategy registry: scaling.strategy -> a Strategy for this worker.

Its own module because it imports every backend (fsdp, zero), and those import the base
classes from trainables.distributed: keeping the registry there made an import cycle.
"""

from __future__ import annotations

from trainables.distributed import DDPStrategy, Strategy, WorkerContext
from trainables.fsdp import FSDP2Strategy
from trainables.zero import DeepSpeedStrategy

STRATEGIES: dict[str, type[Strategy]] = {"none": Strategy, "ddp": DDPStrategy, "fsdp": FSDP2Strategy,
                                         "deepspeed": DeepSpeedStrategy}


def make_strategy(scaling_cfg, train_cfg, ctx: WorkerContext) -> Strategy:
    return STRATEGIES[scaling_cfg.strategy](ctx, scaling_cfg, train_cfg)
