"""The relearning attack (`eval.relearn`): was the knowledge removed, or only hidden?

A copy of the model is fine-tuned on one half of the forget set (a seeded split) for k steps
of plain AdamW on the NLL (LoRA or full), then MA and EL_n are measured on the other half,
which it never saw in the attack. Knowledge that was only suppressed comes back on the held-out
half too; knowledge that is gone comes back no faster than in a model that never had it (the
retain model). The model under evaluation is never touched: the copy is trained, and the
global RNG state is restored afterwards, so enabling the attack changes no other figure.

Report: {"relearn": {"ma", "el<n>" (each n of eval.el_n), "ma_before", "el<n>_before",
"steps", "records"}}; figures on the held-out half as evaluate.py computes them (answer tokens
only in a Q&A set).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch

from trainables.errors import InputError


def split_halves(n: int, seed: int) -> tuple[list[int], list[int]]:
    """(train half, held-out half) of n records: a seeded permutation, cut in two (the train
    half is the smaller when n is odd), each half in index order."""
    if n < 2:
        raise InputError(f"eval.relearn: the forget set has {n} record; the attack needs at least 2")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[:n // 2]), sorted(order[n // 2:])


def _held_out_figures(model, tset, eval_cfg, idx: list[int]) -> dict[str, float]:
    from trainables.evaluate import _nanmean, _sequence_stats

    light = dataclasses.replace(eval_cfg, progress=False)
    stats = _sequence_stats(model, tset, light, idx, progress=False)
    return {"ma": _nanmean(stats["ma"]), **{f"el{n}": float(np.mean(stats[f"el{n}"])) for n in eval_cfg.el_n}}


def _attack_copy(model, rc, lora_cfg):
    """A trainable copy: adapters of the model merged in, then fresh LoRA (rc.lora) or every
    weight trainable (full)."""
    from trainables.models import apply_lora

    attacked = copy.deepcopy(model)
    if hasattr(attacked, "merge_and_unload"):  # a PEFT model: its adapters are part of what is attacked
        attacked = attacked.merge_and_unload()
    if rc.lora:
        attacked.requires_grad_(False)
        lora = dataclasses.replace(lora_cfg, enabled=True, rank=rc.lora_rank, alpha=2.0 * rc.lora_rank, dropout=0.0)
        return apply_lora(attacked, lora)
    return attacked.requires_grad_(True)  # RMU froze all but a few MLP weights: the attacker does not


def relearn_steps(model, tset, train_idx: list[int], rc, device) -> list[float]:
    """rc.steps AdamW steps of NLL on batches of rc.batch_size drawn from train_idx (seeded,
    cycled); returns the loss of each step."""
    from trainables.methods import token_nll_sum
    from trainables.undial import weight_sum

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=rc.lr)
    generator = torch.Generator().manual_seed(rc.seed + 1)
    labels_all = tset.labels
    order: list[int] = []
    losses = []
    model.train()
    for _ in range(rc.steps):
        while len(order) < rc.batch_size:
            order += [train_idx[i] for i in torch.randperm(len(train_idx), generator=generator).tolist()]
        batch, order = order[:rc.batch_size], order[rc.batch_size:]
        ids, mask = tset.input_ids[batch].to(device), tset.attention_mask[batch].to(device)
        labels = labels_all[batch].to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = token_nll_sum(logits, labels) / weight_sum(labels, None).clamp_min(1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def relearn_report(model, tokenizer, data, cfg, device) -> dict:
    """{"relearn": {...}} for one plain (unsharded) model, or {} when eval.relearn is off. The
    model is left as it was: weights, mode and the global RNG state."""
    rc = cfg.eval.relearn
    if not rc.enabled:
        return {}
    forget = data.forget
    train_idx, held_idx = split_halves(len(forget), rc.seed)
    was_training = model.training
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(rc.seed)  # dropout in the attack: seeded, and the caller's stream untouched
        before = _held_out_figures(model, forget, cfg.eval, held_idx)
        attacked = _attack_copy(model, rc, cfg.lora)
        losses = relearn_steps(attacked, forget, train_idx, rc, device)
        after = _held_out_figures(attacked, forget, cfg.eval, held_idx)
        del attacked
    model.train(was_training)
    out = dict(after)
    out.update({f"{k}_before": v for k, v in before.items()})
    out.update(steps=rc.steps, records=len(held_idx), loss_first=losses[0], loss_last=losses[-1])
    return {"relearn": out}


def retain_model_path(cfg) -> str | None:
    """The model that never saw the forget set: eval.retain_model, else the subset policy's
    reference model."""
    return getattr(cfg.eval, "retain_model", None) or cfg.method.subset.reference_model


def relearn_in_workers(model, tokenizer, data, cfg, ctx, strategy=None, retain: bool = False) -> dict:
    """The attack where the workers are: every rank calls it and gets the same figures.

    Rank 0 alone attacks a copy and broadcasts its figures; the other ranks wait in the
    broadcast. Where every rank holds the whole model (one process, DDP, ZeRO-1/2) the copy is
    rank 0's own; a sharded model (FSDP2, ZeRO-3) is first gathered to rank 0 (a collective)
    and rebuilt there as a plain model, since a sharded copy could only train with every rank
    in every step. Rank 0 then holds the copy, its gradients and AdamW's two moments (~4x the
    parameters with full fine-tuning; LoRA: ~1x). `retain`: also attack the retain model (loaded
    on rank 0), reported as "relearn_retain"."""
    if not cfg.eval.relearn.enabled:
        return {}
    sc = cfg.scaling
    sharded = strategy is not None and (sc.strategy == "fsdp" or (sc.strategy == "deepspeed" and sc.zero_stage == 3))
    state = strategy.full_model_state() if sharded else None  # every rank: the gather is collective
    out = None
    if ctx.is_main:
        plain = _rebuilt(cfg, state, ctx.device) if sharded else model
        out = relearn_report(plain, tokenizer, data, cfg, ctx.device)
        del plain
        path = retain_model_path(cfg) if retain else None
        if path is not None:
            from trainables.models import configured_model

            reference = configured_model(cfg.model, ctx.device, path, key="eval.retain_model")
            out["relearn_retain"] = relearn_report(reference, tokenizer, data, cfg, ctx.device)["relearn"]
            del reference
    return ctx.broadcast_object(out)


def _rebuilt(cfg, state: dict, device):
    """A plain model from a gathered full state (the configured model, with the run's LoRA
    adapters where it has them: the state's keys are those of the trained model)."""
    from trainables.models import apply_lora, configured_model

    model = configured_model(cfg.model, device)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    model.load_state_dict(state)
    return model.eval()
