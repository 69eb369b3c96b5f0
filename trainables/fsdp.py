"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for the per-worker training function.

Each transformer block (the model's `_no_split_modules`, or scaling.fsdp_block_class) is
sharded, then the root (embeddings, final norm, the tied LM head). Parameters, gradients and
AdamW state are split across workers (1/N each); a block's full weights exist only while it
runs. On GPU the blocks compute in bfloat16 with float32 master weights and float32 gradient
reduction (MixedPrecisionPolicy); on CPU everything stays in the model's dtype (gloo, as
measured: FSDP2 runs on CPU, FSDP1 does not).

Teacher memory, full fine-tuning: the frozen copy is sharded the same way, so it costs
1/N of the model per worker (plus one block gathered at a time). LoRA: no copy at all (the
adapters are switched off on the same sharded model, or method.teacher=cached).

Gradients are reduce-scattered after every micro-batch (no `no_sync`): accumulating unsharded
gradients would hold a full-model gradient per worker, which is what FSDP is for avoiding.
FSDP2 averages gradients over workers like DDP, so the loop's `loss * world_size` holds.

With one process (python -m, torchrun --nproc-per-node 1) the model is still sharded, over a
private group of one, so the bf16 policy applies on a single GPU; blocks then stay gathered
between forward and backward (nothing to free by resharding).

State dicts (the base class's torch.distributed.checkpoint helpers): full, gathered to rank 0
on CPU (other ranks get {}); loading broadcasts from rank 0, so the best-state copy and
checkpoints live on rank 0 only.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from trainables.distributed import Strategy
from trainables.errors import InputError


def transformer_blocks(model, block_class: str | None = None) -> list[torch.nn.Module]:
    """The repeated blocks of a Hugging Face causal LM (or a PEFT model around one), each to be
    sharded on its own: the modules whose class is `block_class` (scaling.fsdp_block_class) or,
    by default, in the model's `_no_split_modules` (Hugging Face's list of blocks that must
    stay whole: the decoder layers, e.g. LlamaDecoderLayer). Outermost matches only (a listed
    class nested in another listed one is left to its parent). Refuses when none is found."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    family = getattr(getattr(base, "config", None), "model_type", None) or type(base).__name__
    names = {block_class} if block_class else set(getattr(base, "_no_split_modules", None) or [])
    blocks: list[torch.nn.Module] = []
    inside: set[int] = set()  # ids of modules under a block already taken
    for module in model.modules():  # pre-order: a parent comes before its children
        if id(module) in inside:
            continue
        if type(module).__name__ in names:
            blocks.append(module)
            inside.update(id(m) for m in module.modules())
    if blocks:
        return blocks
    if block_class:
        raise InputError(f"scaling.fsdp_block_class: no module of class '{block_class}' in model family "
                         f"'{family}' (check the class name of its decoder layer)")
    raise InputError(f"scaling.fsdp_block_class: model family '{family}' declares no blocks to shard "
                     "(_no_split_modules); set scaling.fsdp_block_class to its decoder layer's class name "
                     "(e.g. LlamaDecoderLayer)")


class FSDP2Strategy(Strategy):
    name = "fsdp"

    def _sharding_kwargs(self, model) -> dict:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if getattr(self, "_mesh", None) is None:
            self._mesh = init_device_mesh(self.ctx.device.type, (self.ctx.world_size,))
        kwargs = {"mesh": self._mesh}
        if self.ctx.device.type == "cuda":
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        return kwargs

    def _shard(self, model, reshard_after_forward: bool):
        from torch.distributed.fsdp import fully_shard

        if not dist.is_initialized():
            # One process without a group (python -m / torchrun --nproc-per-node 1): shard over
            # a private group of one, so the mixed-precision policy (bf16 on GPU) still applies.
            backend = "nccl" if self.ctx.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                    device_id=self.ctx.device if self.ctx.device.type == "cuda" else None)
        kwargs = self._sharding_kwargs(model)
        kwargs["reshard_after_forward"] = reshard_after_forward
        for block in transformer_blocks(model, self.scaling.fsdp_block_class):
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        return model

    def wrap(self, model):
        # With one worker there is nothing to free by resharding after forward; keeping the
        # gathered (bf16) blocks saves gathering them again for backward.
        return self._shard(model, reshard_after_forward=self.ctx.world_size > 1)

    def wrap_teacher(self, teacher_model):
        # The teacher never runs backward: always free its gathered blocks after forward.
        return self._shard(teacher_model, reshard_after_forward=True)

    # The base class's clip_grad_norm_ works on the DTensor gradients (the total norm is a DTensor
    # reduced over the mesh; .full_tensor() gives the global value), and its state-dict helpers
    # (torch.distributed.checkpoint.state_dict) gather full tensors to rank 0 and broadcast them
    # back when loading.
