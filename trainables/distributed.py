"""Process context and parallel strategies for the per-worker training function.

The same code runs in one process, under torchrun (RANK/WORLD_SIZE in the
environment) and under Ray Train (which sets up the process group first).
A strategy owns everything that differs between DDP, FSDP2 and DeepSpeed:
wrapping, backward, the optimiser step, and full state dicts.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainables.errors import InputError


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def setup(cls, use_gpu: bool = False) -> "WorkerContext":
        """Join (or start) the process group if there is one; pick this worker's device."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1 and not dist.is_initialized():  # torchrun: we start the group
            backend = "nccl" if use_gpu and torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend)
        if dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        else:
            rank, world_size = 0, 1
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_gpu:
            if not torch.cuda.is_available():
                raise InputError("scaling.use_gpu: true, but no CUDA device is visible")
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        return cls(rank, world_size, local_rank, device)

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def broadcast_object(self, obj):
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


# --------------------------------------------------------------------------------------------


def _full_state_options(trainable_only: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)


class Strategy:
    """One process or DDP; subclasses override what differs.

    `module` is the wrapped model used for training forward passes; `inner` is the
    Hugging Face / PEFT model (what evaluation calls and what gets saved).
    """

    name = "none"

    def __init__(self, ctx: WorkerContext, scaling_cfg, train_cfg):
        self.ctx = ctx
        self.scaling = scaling_cfg
        self.train_cfg = train_cfg
        self.module = None
        self.inner = None
        self.optimizer = None
        self.scheduler = None

    # -- setup
    def prepare(self, model, make_optimizer, make_scheduler):
        self.inner = model
        self.module = self.wrap(model)
        self.optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
        self.scheduler = make_scheduler(self.optimizer)

    def wrap(self, model):
        return model

    def wrap_teacher(self, teacher_model):
        """A frozen full-fine-tuning teacher, placed like the student."""
        return teacher_model

    # -- step
    def accumulation_context(self, is_last_micro: bool):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        """Clip, step the optimiser and scheduler, zero grads; returns the gradient norm."""
        params = [p for p in self.inner.parameters() if p.requires_grad]
        max_norm = self.train_cfg.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        return float(norm)

    @property
    def eval_model(self):
        return self.inner

    # -- state (collective: every rank calls). The getters gather full CPU tensors to rank 0 (other
    # ranks get {}); the setters take rank 0's and broadcast it (other ranks may pass {}).
    def trainable_state(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(self.module, options=_full_state_options(trainable_only=True))
        return {k: v.detach().clone() for k, v in state.items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        # dict(state): the helper renames keys of the dict it is given (DDP's "module." prefix)
        set_model_state_dict(self.module, dict(state), options=StateDictOptions(
            full_state_dict=True, strict=False, broadcast_from_rank0=dist.is_initialized()))

    def optimizer_state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.module, self.optimizer, options=_full_state_options(False))

    def load_optimizer_state(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.module, self.optimizer, state, options=StateDictOptions(
            full_state_dict=True, broadcast_from_rank0=dist.is_initialized()))

    def full_model_state(self) -> dict[str, torch.Tensor]:
        """Every weight, gathered to CPU: what save_pretrained writes."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.module, options=_full_state_options(trainable_only=False))


class DDPStrategy(Strategy):
    name = "ddp"

    def wrap(self, model):
        from torch.nn.parallel import DistributedDataParallel

        if not self.ctx.distributed:
            return model
        ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def accumulation_context(self, is_last_micro: bool):
        if self.ctx.distributed and not is_last_micro:
            return self.module.no_sync()
        return contextlib.nullcontext()

