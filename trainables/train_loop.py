"""The UnDIAL recipe: setup, train, save — one function per worker.

`train_fn_per_worker(config_dict)` is plain PyTorch + torch.distributed: it runs
in one process, under `torchrun --nproc-per-node N -m trainables.train_loop`, and
under Ray Train's TorchTrainer (the launcher in orchestrator/ passes it).

The global batch is fixed by the config whatever the worker count: every global
batch is cut into micro-batches (micro_batch_size x grad_accum x workers) and each
micro-batch loss is normalised by the global batch's weight sum, so 1 process and
N workers take the same optimiser steps.
"""

from __future__ import annotations

import atexit
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainables.data import TokenizedSet, load_datasets
from trainables.distributed import Strategy, WorkerContext
from trainables.errors import InputError, TrainingDiverged
from trainables.io import write_json
from trainables.methods import build_method
from trainables.evaluate import (Shard, evaluate_model, evaluate_original, load_result_model, original_as_final,
                                 retain_for, watch_from_report, watch_metrics)
from trainables.models import (AdapterOffTeacher, CachedTeacher, FrozenCopyTeacher, apply_lora,
                               configured_model, configured_tokenizer, count_parameters)
from trainables.relearn import relearn_in_workers
from trainables.strategies import make_strategy
from trainables.subsets import describe_selection, select_positions, selection_weights
from trainables.tree import numeric
from trainables.undial import weight_sum

CHECKPOINT_FILE = "train_state.json"  # + train_state.safetensors: no pickle (trainables/checkpoint.py)


# --------------------------------------------------------------------------------------------
# Batches


@dataclass
class BatchPlan:
    """Which examples each rank sees at each step: a seeded permutation stream, cut into
    global batches, cut into micro-batches; rank r takes micro-batches [r*accum, (r+1)*accum)."""
    num_examples: int
    batch_size: int
    micro_batch_size: int
    world_size: int
    rank: int
    seed: int

    @property
    def grad_accum(self) -> int:
        return self.batch_size // (self.micro_batch_size * self.world_size)

    def global_batch(self, step: int) -> list[int]:
        start = step * self.batch_size
        out: list[int] = []
        while len(out) < self.batch_size:
            epoch, offset = divmod(start + len(out), self.num_examples)
            order = torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(self.seed + epoch))
            take = min(self.num_examples - offset, self.batch_size - len(out))
            out.extend(order[offset:offset + take].tolist())
        return out

    def micro_batches(self, step: int) -> list[list[int]]:
        batch = self.global_batch(step)
        m = self.micro_batch_size
        mine = range(self.rank * self.grad_accum, (self.rank + 1) * self.grad_accum)
        return [batch[i * m:(i + 1) * m] for i in mine]


def make_batch_plan(num_examples: int, train_cfg, world_size: int, rank: int, seed_offset: int = 0) -> BatchPlan:
    micro = train_cfg.micro_batch_size or max(1, train_cfg.batch_size // world_size)
    if train_cfg.batch_size % (micro * world_size):
        raise InputError(f"train.batch_size: {train_cfg.batch_size} is not a multiple of micro_batch_size "
                         f"({micro}) x workers ({world_size})")
    return BatchPlan(num_examples, train_cfg.batch_size, micro, world_size, rank, train_cfg.seed + seed_offset)


def make_retain_plan(num_examples: int, train_cfg, forget_plan: BatchPlan) -> BatchPlan:
    """The retain batches beside the forget ones: train.retain_batch_size sequences a step
    (default batch_size), cut into as many micro-batches per rank as the forget batch, each
    forget micro-batch's forward paired with one retain micro-batch."""
    size = train_cfg.retain_batch_size or train_cfg.batch_size
    parts = forget_plan.world_size * forget_plan.grad_accum
    if size % parts:
        raise InputError(f"train.retain_batch_size: {size} is not a multiple of the forget batch's micro-batches "
                         f"({parts} = workers x gradient accumulation)")
    return BatchPlan(num_examples, size, size // parts, forget_plan.world_size, forget_plan.rank,
                     train_cfg.seed + 1)


def total_steps(train_cfg, num_examples: int) -> int:
    if train_cfg.max_steps is not None:
        return train_cfg.max_steps
    return max(1, math.ceil(train_cfg.epochs * num_examples / train_cfg.batch_size))


def lr_lambda(train_cfg, steps: int):
    warmup = train_cfg.warmup_steps

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if train_cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        if train_cfg.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Reporting: Ray Train when inside a Ray Train worker, else a local log.


class LocalReporter:
    # A checkpoint is a full gather + torch.save of weights and optimiser state; a local run has
    # nowhere to keep one (it resumes only from run.resume_from), so it skips writing them.
    keeps_checkpoints = False

    def __init__(self, ctx: WorkerContext, log=print):
        self.ctx = ctx
        self.log = log
        self.last_checkpoint: str | None = None

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        if checkpoint_dir is not None:
            self.last_checkpoint = checkpoint_dir

    def restore_dir(self, run_cfg) -> str | None:
        return run_cfg.resume_from


class RayReporter(LocalReporter):
    keeps_checkpoints = True

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def restore_dir(self, run_cfg) -> str | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return run_cfg.resume_from
        from pyarrow.fs import LocalFileSystem

        if isinstance(checkpoint.filesystem, LocalFileSystem) and os.path.isdir(checkpoint.path):
            return checkpoint.path  # local or shared storage: read in place, no copy
        local = tempfile.mkdtemp(prefix="undial-restore-")  # cloud storage: download, removed at exit
        atexit.register(shutil.rmtree, local, ignore_errors=True)
        return checkpoint.to_directory(local)


def in_ray_train_worker() -> bool:
    if "ray" not in sys.modules:
        return False
    try:
        import ray.train

        ray.train.get_context().get_world_rank()
        return True
    except Exception:  # no Ray Train session in this process
        return False


# --------------------------------------------------------------------------------------------
# Setup pieces


def build_weights(subset_spec, forget: TokenizedSet, model, cfg, tokenizer, log=print) -> torch.Tensor:
    """Selection of token positions (subset S) as loss weights [N, T]."""
    reference = None
    if subset_spec.policy == "reference":
        if not subset_spec.reference_model:
            raise InputError("method.subset.reference_model: policy 'reference' needs a reference model")
        reference = configured_model(cfg.model, next(model.parameters()).device, subset_spec.reference_model,
                                     key="method.subset.reference_model")
        if reference.get_output_embeddings().weight.shape[0] != model.get_output_embeddings().weight.shape[0]:
            raise InputError("method.subset.reference_model: its vocabulary differs from the model's")
    if forget.texts is None and subset_spec.policy not in ("all", "reference"):
        raise InputError(f"method.subset.policy: '{subset_spec.policy}' needs text records; {forget.name} holds "
                         "token ids only (use all or reference)")
    selected = select_positions(subset_spec, texts=forget.texts, offsets=forget.offsets,
                                input_ids=forget.input_ids, attention_mask=forget.attention_mask,
                                record_spans=forget.spans, model=model, reference_model=reference)
    del reference
    stats = describe_selection(selected, forget.attention_mask)
    if stats["selected_tokens"] == 0 and subset_spec.mode == "hard":
        raise InputError(f"method.subset.policy: '{subset_spec.policy}' selected no token of the forget set; "
                         "nothing would be unlearned (check the policy's settings, or use mode: soft)")
    log(f"subset '{subset_spec.policy}' ({subset_spec.mode}): {stats['selected_tokens']} of "
        f"{stats['real_tokens']} tokens selected ({stats['fraction']:.1%})")
    weights = selection_weights(selected, forget.attention_mask, subset_spec.mode, subset_spec.soft_weight)
    # Q&A records: the question is context only, weight 0 whatever the policy (soft mode included).
    return weights if forget.answer_mask is None else weights * forget.answer_mask


@dataclass
class TrainState:
    step: int = 0
    history: list[dict] = field(default_factory=list)
    original: dict | None = None  # the watched figures (forget MA, held-out ppl) of the original model
    original_report: dict | None = None  # its whole evaluation, when this run made it (kept on resume)
    best_step: int = 0
    best_score: float = float("inf")
    best_state: dict | None = None  # trainable weights at best_step (CPU); None = the initial weights
    stopped: str | None = None
    curve: list[dict] = field(default_factory=list)  # every step: step, loss, grad_norm, lr, time_s


@dataclass
class Job:
    """What a worker does around training (it travels as config["_job"]): the whole evaluation
    of the original model and of the selected one, where the model already is."""
    evaluate_original: bool = False
    evaluate_final: bool = False
    original: dict | None = None  # the original model's evaluation, measured once elsewhere (a sweep's)
    train: bool = True            # False: only evaluate the configured model (`undial eval`)

    @classmethod
    def from_plain(cls, plain: dict | None) -> "Job":
        return cls(**(plain or {}))


def evaluation_shard(cfg, ctx: WorkerContext) -> Shard:
    """Split evaluation batches across ranks where every rank holds the whole model; sharded
    models (FSDP2, ZeRO-3) need every rank in every forward, so each rank computes all."""
    sc = cfg.scaling
    sharded = sc.strategy == "fsdp" or (sc.strategy == "deepspeed" and sc.zero_stage == 3)
    return Shard.replicated() if sharded else Shard(ctx.rank, ctx.world_size)


def thresholds_from(report: dict, cfg) -> dict:
    """Jang et al.'s stopping thresholds: EL_n and MA on the never-seen records, from the
    original model's evaluation."""
    n = cfg.eval.el_n[0]
    return {"ma": report["unseen"]["ma"], f"el{n}": report["unseen"][f"el{n}"]}


def selection_score(metrics: dict, original: dict, train_cfg) -> float:
    """Lower is better; inf when held-out perplexity broke the allowed factor."""
    ppl, ppl0 = metrics.get("retain.ppl"), original.get("retain.ppl")
    if ppl is not None and ppl0 is not None and not ppl <= train_cfg.max_ppl_factor * ppl0:
        return float("inf")
    return metrics["forget.ma"]


def forget_progress(metrics: dict, original: dict, thresholds: dict) -> float:
    """How far forget MA has come from the original's toward the unseen set's: 0 at the
    original, 1 at the threshold (1 when the original is already at or under it)."""
    gap = original["forget.ma"] - thresholds["ma"]
    return (original["forget.ma"] - metrics["forget.ma"]) / gap if gap > 0 else 1.0


def should_stop(metrics: dict, original: dict, thresholds: dict | None, cfg, step: int = 0,
                previous: dict | None = None) -> str | None:
    """Why the run stops at this eval step (None: it goes on). `previous`: the figures of the
    eval step before it (the original's at the first), for train.stop_min_gain."""
    tc = cfg.train
    if tc.stop_ppl_factor is not None and "retain.ppl" in metrics:
        if not metrics["retain.ppl"] <= tc.stop_ppl_factor * original["retain.ppl"]:
            return f"held-out perplexity rose past {tc.stop_ppl_factor} x the original"
    if thresholds is not None and step >= tc.stop_progress_step:
        progress = forget_progress(metrics, original, thresholds)
        if tc.stop_min_progress is not None and progress < tc.stop_min_progress:
            return (f"forget MA came {progress:.0%} of the way to the unseen set's by step {step} "
                    f"(train.stop_min_progress {tc.stop_min_progress:g})")
        if tc.stop_min_gain is not None and previous is not None and "forget.ma" in previous:
            gain = progress - forget_progress(previous, original, thresholds)
            if gain < tc.stop_min_gain:
                return (f"forget MA came {gain:.0%} of the way to the unseen set's since step "
                        f"{previous.get('step', '?')} (train.stop_min_gain {tc.stop_min_gain:g})")
    if tc.stop_when == "threshold" and thresholds is not None:
        n = cfg.eval.el_n[0]
        if metrics["forget.ma"] < thresholds["ma"] and metrics[f"forget.el{n}"] < thresholds[f"el{n}"]:
            return f"forget MA and EL{n} fell below the unseen-set thresholds"
    return None


# --------------------------------------------------------------------------------------------
# Checkpoints: one folder, written by rank 0, read by every rank.


def save_checkpoint(path: Path, strategy: Strategy, state: TrainState, ctx: WorkerContext) -> None:
    from trainables.checkpoint import rng_state, write_state

    payload = {"model": strategy.trainable_state(), "optimizer": strategy.optimizer_state(),
               "scheduler": strategy.scheduler.state_dict(), "step": state.step, "history": state.history,
               "original": state.original, "best_step": state.best_step, "best_score": state.best_score,
               "best_state": state.best_state, "stopped": state.stopped, "original_report": state.original_report,
               "curve": state.curve, "rng": rng_state()}
    if ctx.is_main:
        write_state(path, payload)  # tensors to safetensors, the rest to JSON


def load_checkpoint(path: str, strategy: Strategy, state: TrainState) -> None:
    from trainables.checkpoint import read_state, set_rng_state

    payload = read_state(path, "run.resume_from")  # refuses a pickle train_state.pt unopened
    strategy.load_trainable_state(payload["model"])
    strategy.load_optimizer_state(payload["optimizer"])
    strategy.scheduler.load_state_dict(payload["scheduler"])
    for key in ("step", "history", "original", "best_step", "best_score", "best_state", "stopped"):
        setattr(state, key, payload[key])
    state.curve = payload.get("curve", [])
    state.original_report = payload.get("original_report")
    set_rng_state(payload["rng"])


# --------------------------------------------------------------------------------------------
# The recipe


def _stack(tset: TokenizedSet, idx: list[int], device):
    ids = tset.input_ids[idx].to(device)
    mask = tset.attention_mask[idx].to(device)
    return ids, mask, tset.labels[idx].to(device)  # -100 at padding and at a Q&A set's question tokens


@dataclass
class Run:
    """What setup builds for the loop: data, weights, batch plans, teacher, method, strategy."""
    tokenizer: object
    data: object
    weights: torch.Tensor
    steps: int
    plan: BatchPlan
    retain_plan: BatchPlan | None
    method: object
    teacher: object
    strategy: Strategy


def setup_run(cfg, ctx: WorkerContext, log=print) -> Run:
    """Tokenizer, data, model, subset weights, teacher and strategy: each loaded once, here."""
    tc = cfg.train
    tokenizer = configured_tokenizer(cfg.model)
    method = build_method(cfg.method)
    data = load_datasets(cfg.data, tokenizer, need_retain=cfg.method.uses_retain())
    if cfg.method.retain_weight > 0 and data.retain is None:
        raise InputError("method.retain_weight: > 0 needs data.retain")
    model = configured_model(cfg.model, ctx.device)
    model.config.use_cache = False
    forget = data.forget
    weights = build_weights(cfg.method.subset, forget, model, cfg, tokenizer, log)
    steps = total_steps(tc, len(forget))
    plan = make_batch_plan(len(forget), tc, ctx.world_size, ctx.rank)
    retain_plan = make_retain_plan(len(data.retain), tc, plan) if data.retain else None

    teacher = None
    if method.needs_teacher and cfg.method.teacher == "cached":
        # Before the adapters are added: with LoRA the base model is the teacher, so its
        # log-probabilities are computed once here instead of an adapters-off pass per step.
        teacher = CachedTeacher.compute(model, forget.input_ids, forget.attention_mask,
                                        cfg.method.teacher_cache_max_gb, log=log)
    elif (method.needs_teacher or method.needs_frozen_model) and not cfg.lora.enabled:
        teacher = FrozenCopyTeacher.copy_of(model)
    method.prepare(model, seed=tc.seed, log=log)  # RMU: freeze all but a few MLP weights
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    total, trainable = count_parameters(model)
    log(f"model: {total / 1e6:.2f}M parameters, {trainable / 1e6:.3f}M trainable "
        f"({'LoRA r=%d' % cfg.lora.rank if cfg.lora.enabled else 'full fine-tuning'}), dtype {cfg.model.dtype}")
    log(f"batch: global {tc.batch_size} = micro {plan.micro_batch_size} x accum {plan.grad_accum} x "
        f"workers {ctx.world_size}; {steps} steps; forget set {len(forget)} x {forget.input_ids.shape[1]} tokens")

    strategy = make_strategy(cfg.scaling, tc, ctx)
    strategy.prepare(
        model,
        lambda params: torch.optim.AdamW(params, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay),
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc, steps)))
    if isinstance(teacher, FrozenCopyTeacher):
        teacher.model = strategy.wrap_teacher(teacher.model)
    elif teacher is None and method.needs_teacher and cfg.lora.enabled:
        teacher = AdapterOffTeacher(strategy.inner, forward=strategy.module)
    if teacher is not None:
        log(f"teacher: {teacher.kind}")
    return Run(tokenizer, data, weights, steps, plan, retain_plan, method, teacher, strategy)


def train_step(run: Run, step: int, cfg, ctx: WorkerContext, log=print) -> tuple[float, float]:
    """One optimiser step on global batch `step` (this rank's micro-batches, accumulated):
    returns (loss of the whole global batch, gradient norm)."""
    forget, data, strategy, teacher = run.data.forget, run.data, run.strategy, run.teacher
    micro_batches = run.plan.micro_batches(step)
    global_idx = run.plan.global_batch(step)
    normalizer = float(run.method.batch_normalizer(forget.labels[global_idx], run.weights[global_idx]))
    retain_plan = run.retain_plan
    retain_micro = retain_plan.micro_batches(step) if retain_plan else None
    retain_norm = (float(weight_sum(data.retain.labels[retain_plan.global_batch(step)], None))
                   if retain_plan else None)
    step_loss = torch.zeros((), device=ctx.device)
    bf16 = cfg.train.mixed_precision == "bf16"

    def forward(**batch):  # the losses (and the backward) run outside autocast, in float32
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=bf16):
            return strategy.module(**batch, **run.method.forward_kwargs)

    for i, idx in enumerate(micro_batches):
        ids, mask, labels = _stack(forget, idx, ctx.device)
        w = run.weights[idx].to(ctx.device)
        with strategy.accumulation_context(is_last_micro=i == len(micro_batches) - 1):
            teacher_logits = (teacher(ids, mask, torch.tensor(idx)) if run.method.needs_teacher else None)
            outputs = forward(input_ids=ids, attention_mask=mask)
            loss = run.method.forget_loss(outputs, teacher_logits, labels, w, normalizer=max(normalizer, 1e-12))
            if retain_micro is not None:
                r_ids, r_mask, r_labels = _stack(data.retain, retain_micro[i], ctx.device)
                r_outputs = forward(input_ids=r_ids, attention_mask=r_mask)
                loss = loss + run.method.retain_loss(r_outputs, teacher, r_ids, r_mask, r_labels, retain_norm)
            # Data-parallel backends average gradients over workers; the loss is already a
            # share of the global batch, so scale back up to a sum.
            strategy.backward(loss * ctx.world_size)
        step_loss += loss.detach()
    step_loss = float(ctx.all_reduce_sum(step_loss))
    if not math.isfinite(step_loss):
        raise TrainingDiverged(f"loss became {step_loss} at step {step + 1}; lower train.lr "
                               "or set train.max_grad_norm")
    if normalizer == 0 and ctx.is_main:
        log(f"warning: step {step + 1} had no participating token (subset selected none in this batch)")
    return step_loss, strategy.step()


def watched_figures(strategy: Strategy, tokenizer, data, cfg, shard: Shard, el_watch: int | None, device,
                    report: dict | None = None, thresholds: dict | None = None) -> dict:
    """What an eval step records (flat report paths): train.watch "light" the watched figures
    (forget EL_n once forget MA is under its threshold), "full" the whole evaluation (EL_n, MIA
    AUC, MAUVE, ...); from `report` where it is at hand."""
    model = strategy.eval_model
    if cfg.train.watch == "full":
        if report is None:
            was_training = model.training
            report = evaluate_model(model, tokenizer, data, cfg.eval, seed=cfg.train.seed, shard=shard,
                                    device=device, log=lambda *a, **k: None)
            model.train(was_training)  # evaluate_model leaves the model in eval mode
        return numeric(report)
    if report is not None:
        return watch_from_report(report, el_watch)
    return watch_metrics(model, data, cfg.eval, shard, el_watch, (thresholds or {}).get("ma"))


def final_evaluation(strategy: Strategy, tokenizer, data, cfg, original: dict | None, shard: Shard,
                     ctx: WorkerContext, log) -> dict:
    """The whole evaluation of the model as it is now, on every rank (with eval.retain_model the
    privacy figures against it, with eval.relearn the relearning attack)."""
    log("evaluating the unlearned model ...")
    retain = retain_for(cfg, original, tokenizer, data, shard, ctx.device, log)  # None without eval.retain_model
    report = evaluate_model(strategy.eval_model, tokenizer, data, cfg.eval, seed=cfg.train.seed, shard=shard,
                            device=ctx.device, log=log, retain=retain)
    report.update(relearn_in_workers(strategy.eval_model, tokenizer, data, cfg, ctx, strategy))
    return report


def run_unlearning(cfg, ctx: WorkerContext, output_dir: str | Path | None, reporter: LocalReporter | None = None,
                   log=print, job: Job | None = None) -> dict:
    """Setup, (evaluate the original,) train, (evaluate the selected model,) save. Returns
    {"history", "best_step", "steps", "stopped", "model_dir", "evaluation", "timings", ...}."""
    log = log if ctx.is_main else (lambda *a, **k: None)
    reporter = reporter or LocalReporter(ctx, log)
    job = job or Job()
    tc = cfg.train
    seed_everything(tc.seed)
    t_setup = time.perf_counter()
    timings: dict[str, float] = {}
    run = setup_run(cfg, ctx, log)
    tokenizer, data, strategy, steps = run.tokenizer, run.data, run.strategy, run.steps

    # ---- resume, or the original model's figures
    state = TrainState()
    restore = reporter.restore_dir(cfg.run)
    resumed_at = None
    if restore:
        load_checkpoint(restore, strategy, state)
        resumed_at = state.step
        log(f"resumed from {restore} at step {state.step}")
    shard = evaluation_shard(cfg, ctx)
    original = job.original or state.original_report
    gives_up = tc.stop_min_progress is not None or tc.stop_min_gain is not None  # measured toward the unseen MA
    wants_thresholds = (tc.stop_when == "threshold" or gives_up) and data.unseen is not None
    if original is None and (job.evaluate_original or wants_thresholds):
        log("evaluating the original model ...")
        t_eval = time.perf_counter()
        original = evaluate_original(strategy.eval_model, tokenizer, data, cfg, seed=tc.seed, shard=shard,
                                     device=ctx.device, log=log)  # with eval.retain_model: its section too
        original.update(relearn_in_workers(strategy.eval_model, tokenizer, data, cfg, ctx, strategy, retain=True))
        timings["original_eval_s"] = time.perf_counter() - t_eval
        state.original_report = original
    thresholds = None
    if wants_thresholds:
        thresholds = thresholds_from(original, cfg)
        log(f"thresholds (unseen set): {thresholds}")
    el_watch = cfg.eval.el_n[0] if thresholds is not None and tc.stop_when == "threshold" else None
    if state.original is None:
        # The original's whole evaluation (this run's or the sweep's) already holds these figures.
        state.original = watched_figures(strategy, tokenizer, data, cfg, shard, el_watch, ctx.device, original)
        state.best_score = selection_score(state.original, state.original, tc)
        state.history.append({"step": 0, **state.original})
        log(f"step 0: {_fmt(state.original)}")

    # ---- train
    checkpoint_every = cfg.run.checkpoint_every or tc.eval_every
    # Test hook: the last rank dies after step fail_at in an attempt that did not resume. A
    # restarted attempt resumes from a checkpoint, so the hook must come after the first one.
    fail_at = cfg.run.fail_at_step if restore is None else None
    if fail_at is not None and fail_at <= checkpoint_every:
        raise InputError(f"run.fail_at_step: {fail_at} must come after the first checkpoint (step "
                         f"{checkpoint_every}, run.checkpoint_every), or the restarted run would fail again")
    strategy.module.train()
    t0 = time.perf_counter()
    timings["setup_s"] = t0 - t_setup - timings.get("original_eval_s", 0.0)
    timings.update(watch_eval_s=0.0, steps_s=0.0, checkpoint_s=0.0)
    final_report, final_report_step = None, None
    while state.step < steps and state.stopped is None:
        if fail_at is not None and state.step == fail_at:
            # Ray Train's controller collects a rank's report when its poll (every
            # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S) takes it off the rank's one-slot queue: one more
            # report waits until the previous one was taken;
            # after the barrier every rank's checkpoints so far have been taken, and the pause lets
            # the poll's answers reach the controller, so the restarted run finds them.
            reporter.report({"step": state.step, "fail_at_step": fail_at}, None)
            ctx.barrier()
            if ctx.rank == ctx.world_size - 1:
                print(f"test hook (run.fail_at_step): rank {ctx.rank} exits after step {state.step}",
                      file=sys.stderr, flush=True)
                time.sleep(5)
                os._exit(17)
        t_step = time.perf_counter()
        step_loss, grad_norm = train_step(run, state.step, cfg, ctx, log)
        timings["steps_s"] += time.perf_counter() - t_step
        state.step += 1
        lr = strategy.scheduler.get_last_lr()[0]
        metrics = {"step": state.step, "loss": step_loss, "grad_norm": grad_norm, "lr": lr,
                   "time_s": time.perf_counter() - t0}  # since this attempt's first step
        state.curve.append(dict(metrics))
        logged = state.step % tc.log_every == 0 or state.step == 1
        if logged:
            log(f"step {state.step}/{steps}: loss {step_loss:.4f} grad_norm {grad_norm:.3f} lr {lr:.2e} "
                f"({time.perf_counter() - t0:.1f}s)")
        evaluated = state.step % tc.eval_every == 0 or state.step == steps
        if evaluated:
            t_eval = time.perf_counter()
            if job.evaluate_final and state.step == steps:
                # The last step's model is the final one unless an earlier step is kept: its whole
                # evaluation is this eval step's figures too, not a second pass over the same model.
                final_report = final_evaluation(strategy, tokenizer, data, cfg, original, shard, ctx, log)
                final_report_step = state.step
                timings["final_eval_s"] = time.perf_counter() - t_eval
                evaluation = watched_figures(strategy, tokenizer, data, cfg, shard, el_watch, ctx.device,
                                             final_report)
                strategy.module.train()
            else:
                evaluation = watched_figures(strategy, tokenizer, data, cfg, shard, el_watch, ctx.device,
                                             thresholds=thresholds)
                timings["watch_eval_s"] += time.perf_counter() - t_eval
            metrics.update(evaluation)
            previous = state.history[-1] if state.history else None  # the eval step before (step 0 first)
            state.history.append({"step": state.step, "loss": step_loss, **evaluation})
            score = selection_score(evaluation, state.original, tc)
            if score < state.best_score:
                state.best_score, state.best_step = score, state.step
                state.best_state = strategy.trainable_state() if tc.select == "best" else None
            if state.step < steps:  # at the last step there is nothing left to save
                state.stopped = should_stop(evaluation, state.original, thresholds, cfg, state.step, previous)
            log(f"step {state.step}: {_fmt(evaluation)}" + (f" -> stop: {state.stopped}" if state.stopped else ""))
        at_checkpoint = state.step % checkpoint_every == 0 or state.step == steps or state.stopped
        if at_checkpoint and reporter.keeps_checkpoints:
            t_ckpt = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="undial-ckpt-") as tmp:
                save_checkpoint(Path(tmp), strategy, state, ctx)
                reporter.report(metrics, tmp if ctx.is_main else None)
            timings["checkpoint_s"] += time.perf_counter() - t_ckpt
        elif logged or evaluated:
            # Not every step: Ray Train's controller takes reports off a one-slot queue per worker
            # at each poll (every 0.5-2 s), so a report per fast step would throttle training to it.
            reporter.report(metrics, None)

    # ---- save the selected weights
    if tc.select == "best":
        if state.best_state is not None:
            strategy.load_trainable_state(state.best_state)
        elif state.best_step == 0:
            strategy.load_trainable_state(_initial_trainable_state(cfg, strategy))
        log(f"selected step {state.best_step} (rule: lowest forget MA with held-out ppl <= "
            f"{tc.max_ppl_factor} x original)")
    train_seconds = time.perf_counter() - t0 - timings.get("final_eval_s", 0.0)
    evaluation = {"original": original} if job.evaluate_original else {}
    kept = state.best_step if tc.select == "best" else state.step
    reused = original_as_final(original, cfg, tc.seed) if job.evaluate_final and kept == 0 else None
    if final_report is not None and kept == final_report_step:
        evaluation["unlearned"] = final_report  # the kept model is the one evaluated at the last step
    elif reused is not None:
        evaluation["unlearned"] = reused  # the kept model is the original, measured the same way
        log("the kept model is the original: its evaluation is the final report")
    elif job.evaluate_final:
        t_eval = time.perf_counter()
        evaluation["unlearned"] = final_evaluation(strategy, tokenizer, data, cfg, original, shard, ctx, log)
        timings["final_eval_s"] = timings.get("final_eval_s", 0.0) + time.perf_counter() - t_eval
    model_dir = None
    if output_dir is not None:
        model_dir = Path(output_dir)
        save_model(strategy, tokenizer, model_dir, ctx)
    timings.update(loop_s=train_seconds, total_s=time.perf_counter() - t_setup)
    return {"history": state.history, "best_step": state.best_step if tc.select == "best" else state.step,
            "steps": state.step, "stopped": state.stopped, "model_dir": str(model_dir) if model_dir else None,
            "curve": state.curve, "resumed_at": resumed_at, "evaluation": evaluation, "timings": timings,
            "seconds": train_seconds}


def run_evaluation(cfg, ctx: WorkerContext, log=print) -> dict:
    """`undial eval` and a sweep's original model: load the configured model (a model or adapter
    folder) here, on this worker's device, and evaluate it with the evaluation batches split
    across the workers."""
    log = log if ctx.is_main else (lambda *a, **k: None)
    t0 = time.perf_counter()
    tokenizer = configured_tokenizer(cfg.model)
    data = load_datasets(cfg.data, tokenizer, need_retain=False)
    model = load_result_model(cfg.model.name_or_path, cfg.model.dtype, device=ctx.device,
                              trust_remote_code=cfg.model.trust_remote_code, revision=cfg.model.revision,
                              allow_pickle_weights=cfg.model.allow_pickle_weights, key="model.name_or_path")
    report = evaluate_original(model, tokenizer, data, cfg, seed=cfg.train.seed,
                               shard=Shard(ctx.rank, ctx.world_size), device=ctx.device, log=log)
    report.update(relearn_in_workers(model, tokenizer, data, cfg, ctx, retain=True))  # every rank holds the model
    return {"evaluation": {"original": report}, "steps": 0, "history": [], "curve": [],
            "timings": {"total_s": time.perf_counter() - t0}, "seconds": 0.0}


def _initial_trainable_state(cfg, strategy: Strategy) -> dict:
    """The untouched model's trainable weights, for a run whose best step is 0. LoRA: the
    current adapters with every B matrix zeroed (a no-op adapter, exactly the base model);
    full fine-tuning: the original weights, reloaded rather than kept in memory all run."""
    if cfg.lora.enabled:
        return {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in strategy.trainable_state().items()}
    return configured_model(cfg.model).state_dict()


def save_model(strategy: Strategy, tokenizer, model_dir: Path, ctx: WorkerContext) -> None:
    """The result as a Hugging Face folder (safetensors): full model or LoRA adapter + tokenizer."""
    full_state = strategy.full_model_state()
    if ctx.is_main:
        model_dir.mkdir(parents=True, exist_ok=True)
        strategy.inner.save_pretrained(model_dir, state_dict=full_state, safe_serialization=True)
        tokenizer.save_pretrained(model_dir)
    ctx.barrier()


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def train_fn_per_worker(config: dict) -> None:
    """Entry point per worker (Ray Train's train_loop_per_worker, or torchrun).

    `config` is the plain-dict UnlearnConfig plus "_output_dir": where rank 0 saves the result
    (a Hugging Face folder) and train_result.json. Under Ray Train the result also travels as
    the run's last checkpoint (model/ + train_result.json), so a driver on another machine
    gets it from storage.
    """
    from trainables.config import UnlearnConfig, from_dict

    config = dict(config)
    output_dir = config.pop("_output_dir", None)
    job = Job.from_plain(config.pop("_job", None))
    cfg = from_dict(UnlearnConfig, config)
    ctx = WorkerContext.setup(cfg.scaling.use_gpu)
    if not in_ray_train_worker():
        result = (run_unlearning(cfg, ctx, output_dir, LocalReporter(ctx), job=job) if job.train
                  else run_evaluation(cfg, ctx))
        if ctx.is_main and output_dir is not None:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            write_json(Path(output_dir) / "train_result.json", result)
        return
    reporter = RayReporter(ctx)
    with tempfile.TemporaryDirectory(prefix="undial-result-") as final:
        result = (run_unlearning(cfg, ctx, Path(final) / "model", reporter, job=job) if job.train
                  else run_evaluation(cfg, ctx))
        if ctx.is_main:
            write_json(Path(final) / "train_result.json", result)
        reporter.report({"step": result["steps"], "final": 1}, final if ctx.is_main else None)


def main(argv: list[str] | None = None) -> int:
    """torchrun --nproc-per-node 2 -m trainables.train_loop CONFIG.yaml OUTPUT_DIR [key=value ...]"""
    from trainables.config import load_config

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print("usage: python -m trainables.train_loop CONFIG.yaml OUTPUT_DIR [key=value ...]", file=sys.stderr)
        return 2
    try:
        cfg = load_config(argv[0], argv[2:])
        train_fn_per_worker({**cfg.to_dict(), "_output_dir": argv[1]})
    except (InputError, TrainingDiverged) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InputError) else 1
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
