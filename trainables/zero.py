"""DeepSpeed ZeRO (stage 1, 2 or 3) for the per-worker training function.

`deepspeed.initialize` gets the model, *our* torch AdamW (no fused/CPU Adam op to build) and a
config generated from ours (micro-batch, accumulation, clipping, ZeRO stage, bf16), with the
optional user JSON `scaling.deepspeed_config` merged over it ("auto" values keep ours).

Per-step semantics are the loop's: the loop runs `grad_accum` micro-batches, then one
optimiser step. The engine is told where the boundary is (`set_gradient_accumulation_boundary`,
True on the last micro-batch), `engine.backward(loss, scale_wrt_gas=False)` leaves the loss
scaling to the loop (a share of the global batch x world_size, since ZeRO averages gradients
over workers like DDP), and `engine.step()` runs once per loop step: gradient clipping
(`gradient_clipping` = train.max_grad_norm), the optimiser step, zeroing. Our LR scheduler is
not handed to DeepSpeed; it steps once per optimiser step here.

Teacher memory:
- LoRA: the adapters are switched off on the engine's own module: no copy.
- full fine-tuning, ZeRO-1/2: a frozen copy replicated on every worker (1 x the model's
  weights per worker, in its dtype: 2 bytes/parameter in bf16, e.g. 2.6 GB at 1.3B).
- full fine-tuning, ZeRO-3: the frozen copy becomes a second, optimiser-less ZeRO-3 engine
  ("ZeRO inference"): its weights are partitioned like the student's (1/N per worker, one
  layer gathered at a time).
(Or method.teacher=cached: teacher log-probabilities computed once, B*T*V*2 bytes.)

State:
- model weights: gathered full to CPU on rank 0 (ZeRO-3: parameter by parameter with
  GatheredParameters; save: the engine's consolidated state dict, layer by layer);
  loading broadcasts from rank 0 and refreshes the fp32 master partitions.
- optimiser: each worker's fp32 master partition and its AdamW state (exp_avg, exp_avg_sq,
  step) are gathered to rank 0 into the one checkpoint (train_state.safetensors + .json); on resume each worker takes
  back its own. Exact, but tied to the worker count and ZeRO stage (a resume with another
  count is refused with a clear message).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from trainables.distributed import Strategy
from trainables.errors import InputError

STATE_FORMAT = "undial-deepspeed-zero/1"
# Sections the loop owns: a user JSON may not set them to something else.
_OWNED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
_REFUSED = {"optimizer": "the loop passes its own torch AdamW (train.lr, train.betas, train.weight_decay)",
            "scheduler": "the loop steps its own LR schedule (train.schedule, train.warmup_steps)",
            "fp16": "fp16 loss scaling is not supported; use model.dtype: bf16"}


def _merge(ours: dict, theirs: dict) -> dict:
    """`theirs` over `ours`, recursively; a value "auto" keeps ours."""
    out = dict(ours)
    for key, value in theirs.items():
        if value == "auto":
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def batch_shape(train_cfg, world_size: int) -> tuple[int, int]:
    """(micro-batch per worker, accumulation steps): the loop's BatchPlan arithmetic."""
    micro = train_cfg.micro_batch_size or max(1, train_cfg.batch_size // world_size)
    return micro, max(1, train_cfg.batch_size // (micro * world_size))


def build_deepspeed_config(scaling_cfg, train_cfg, world_size: int, bf16: bool) -> dict:
    micro, accum = batch_shape(train_cfg, world_size)
    ours = {
        "train_batch_size": micro * accum * world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": float(train_cfg.max_grad_norm or 0.0),
        "zero_optimization": {"stage": scaling_cfg.zero_stage},
        "bf16": {"enabled": bool(bf16)},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if not scaling_cfg.deepspeed_config:
        return ours
    path = Path(scaling_cfg.deepspeed_config)
    if not path.is_file():
        raise InputError(f"scaling.deepspeed_config: {path} not found")
    try:
        user = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"scaling.deepspeed_config: {path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(user, dict):
        raise InputError(f"scaling.deepspeed_config: {path} must hold a JSON object")
    for key, why in _REFUSED.items():
        value = user.get(key)
        if value is None or (key == "fp16" and not (isinstance(value, dict) and value.get("enabled"))):
            continue  # absent, or fp16 present but disabled
        raise InputError(f"scaling.deepspeed_config: '{key}' is not allowed: {why}")
    merged = _merge(ours, user)
    for key in _OWNED:
        if merged[key] != ours[key]:
            raise InputError(f"scaling.deepspeed_config: {key}={merged[key]} disagrees with the run's batch "
                             f"({key}={ours[key]} from train.batch_size / micro_batch_size and the worker "
                             "count); leave it out or set it to \"auto\"")
    return merged


def _skip_cpu_shm_op(ctx) -> None:
    """On CPU, DeepSpeed's comm backend compiles a shared-memory all-reduce op (minutes of C++
    on first use) that only its inference all-reduce uses; ZeRO training talks through
    torch.distributed. Skip the build unless UNDIAL_DEEPSPEED_SHM_OP=1."""
    if ctx.device.type != "cpu" or os.environ.get("UNDIAL_DEEPSPEED_SHM_OP") == "1":
        return
    import importlib

    # importlib, not `import deepspeed.comm.torch as m`: the package's own `torch` name shadows it
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def _ensure_process_group(ctx) -> None:
    """DeepSpeed needs a process group even for one process: a private one-member group."""
    if dist.is_initialized():
        return
    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


class DeepSpeedStrategy(Strategy):
    name = "deepspeed"

    def __init__(self, ctx, scaling_cfg, train_cfg):
        super().__init__(ctx, scaling_cfg, train_cfg)
        self.engine = None
        self.ds_optimizer = None
        self.ds_config: dict | None = None

    # -- setup
    def prepare(self, model, make_optimizer, make_scheduler):
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "undial" / "torch_extensions"))
        _ensure_process_group(self.ctx)
        _skip_cpu_shm_op(self.ctx)
        import deepspeed
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(os.environ.get("UNDIAL_DEEPSPEED_LOG_LEVEL", "WARNING"))
        bf16 = next(model.parameters()).dtype == torch.bfloat16
        self.ds_config = build_deepspeed_config(self.scaling, self.train_cfg, self.ctx.world_size, bf16)
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
        self.engine, self.ds_optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=copy.deepcopy(self.ds_config), dist_init_required=False)
        self.inner = self.engine.module
        self.module = self.engine
        self.optimizer = optimizer  # the torch AdamW inside ZeRO: its param_groups carry the lr
        self.scheduler = make_scheduler(optimizer)

    @property
    def stage(self) -> int:
        return int(self.ds_config["zero_optimization"].get("stage", 0))

    def wrap_teacher(self, teacher_model):
        if self.stage < 3:
            return teacher_model  # replicated frozen copy
        import deepspeed

        config = {k: v for k, v in copy.deepcopy(self.ds_config).items() if k != "gradient_clipping"}
        engine, _, _, _ = deepspeed.initialize(model=teacher_model, config=config, dist_init_required=False)
        engine.module.eval()
        return engine

    # -- step
    def accumulation_context(self, is_last_micro: bool):
        self.engine.set_gradient_accumulation_boundary(is_last_micro)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        self.engine.step()
        self.scheduler.step()
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            return float("nan")
        return float(norm.item() if torch.is_tensor(norm) else norm)

    # -- model state
    def _trainable(self):
        return [(n, p) for n, p in self.inner.named_parameters() if p.requires_grad]

    @contextlib.contextmanager
    def _gathered(self, params, modifier_rank=None):
        if self.stage >= 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
                yield
        else:
            yield

    def trainable_state(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, param in self._trainable():
            with self._gathered([param]):
                if self.ctx.is_main:
                    out[name] = param.detach().cpu().clone()
        return out

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Rank 0's `state` wins (other ranks may pass {}); missing names are left as they are."""
        names = self.ctx.broadcast_object(sorted(state) if self.ctx.is_main else None)
        params = dict(self.inner.named_parameters())
        for name in names:
            if name not in params:
                continue
            param = params[name]
            with self._gathered([param], modifier_rank=0):
                if self.stage >= 3:
                    if self.ctx.is_main:
                        param.data.copy_(state[name].to(param.dtype))
                else:
                    value = (state[name].to(param.device, param.dtype) if self.ctx.is_main
                             else torch.empty_like(param.data))
                    if self.ctx.distributed:
                        dist.broadcast(value, src=0)
                    param.data.copy_(value)
        if hasattr(self.ds_optimizer, "refresh_fp32_params"):
            self.ds_optimizer.refresh_fp32_params()  # fp32 masters <- the loaded weights

    def full_model_state(self) -> dict[str, torch.Tensor]:
        if self.stage >= 3:
            return self.engine._zero3_consolidated_16bit_state_dict() or {}
        if not self.ctx.is_main:
            return {}
        return {k: v.detach().cpu().clone() for k, v in self.inner.state_dict().items()}

    # -- optimiser state: this worker's fp32 master partitions and AdamW state, gathered to rank 0
    def _hp_partitions(self) -> list[torch.Tensor]:
        opt = self.ds_optimizer
        for attr in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups",
                     "fp32_groups_flat_partition"):
            if hasattr(opt, attr):
                return list(getattr(opt, attr))
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _local_optimizer_blob(self) -> dict:
        state = self.optimizer.state
        return {
            "hp": [t.detach().cpu().clone() for t in self._hp_partitions()],
            "state": [{k: (v.detach().cpu().clone() if torch.is_tensor(v) else v)
                       for k, v in state.get(t, {}).items()} for t in self._hp_partitions()],
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups],
        }

    def optimizer_state(self) -> dict:
        blob = self._local_optimizer_blob()
        if self.ctx.distributed:
            gathered = [None] * self.ctx.world_size if self.ctx.is_main else None
            dist.gather_object(blob, gathered, dst=0)
        else:
            gathered = [blob]
        if not self.ctx.is_main:
            return {}
        return {"format": STATE_FORMAT, "stage": self.stage, "world_size": self.ctx.world_size, "ranks": gathered}

    def load_optimizer_state(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise InputError("run.resume_from: the checkpoint's optimiser state was not written by the deepspeed "
                             "strategy; resume with the strategy that wrote it")
        if state["world_size"] != self.ctx.world_size or state["stage"] != self.stage:
            raise InputError(f"run.resume_from: the checkpoint was written by {state['world_size']} DeepSpeed "
                             f"workers at ZeRO-{state['stage']}; resume with the same (now "
                             f"{self.ctx.world_size} at ZeRO-{self.stage})")
        mine = state["ranks"][self.ctx.rank]
        for target, hp, saved in zip(self._hp_partitions(), mine["hp"], mine["state"], strict=True):
            target.data.copy_(hp.to(target.device, target.dtype))
            current = self.optimizer.state[target]
            for key, value in saved.items():
                if not torch.is_tensor(value):
                    current[key] = value
                elif value.dim() == 0:  # AdamW's step counter lives on the CPU
                    current[key] = value.clone()
                elif key in current and torch.is_tensor(current[key]) and current[key].shape == value.shape:
                    current[key].copy_(value)  # keep tensors ZeRO has linked views into
                else:
                    current[key] = value.to(target.device)
        for group, saved in zip(self.optimizer.param_groups, mine["param_groups"], strict=True):
            group.update(saved)
