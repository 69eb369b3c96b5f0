"""One typed config for an unlearning run, shared by the driver and the workers.

Every section is a dataclass; `from_dict` builds them from plain dicts, refusing
unknown keys, wrong types and non-finite numbers with one line that names the key
(`train.lr: expected a number > 0, got -1`); each section's `validate` checks its
values the same way (`_check`). CLI overrides are `key.sub=value` strings whose
values are parsed as YAML scalars.

The module imports neither torch nor ray (PyYAML and dataclasses only): the driver
validates before anything heavy is imported, and a worker rebuilds the typed config
from the plain dict Ray hands it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from trainables.errors import InputError
from trainables.tree import leaves, map_leaves

DEMO_PREFIX = "demo:"  # "demo:model" -> <built demo dir>/model


# --------------------------------------------------------------------------------------------
# The token subset S (method.subset); trainables.subsets applies it.

SUBSET_POLICIES = ("all", "entities", "nouns", "pattern", "spans", "reference")
SUBSET_MODES = ("hard", "soft")
_FIELD = "method.subset"
# The registry's names (trainables.methods.METHODS; a test keeps the two equal).
METHOD_NAMES = ("undial", "finetune", "gradient_ascent", "graddiff", "npo", "simnpo", "rmu")


@dataclass(frozen=True)
class SubsetSpec:
    """Mirrors the YAML ``method.subset`` section."""

    policy: str = "all"                   # all | entities | nouns | pattern | spans | reference
    mode: str = "hard"                    # hard: 1 selected / 0 other ; soft: c selected / 1 other
    soft_weight: float = 10.0             # c
    spacy_pipeline: str = "en_core_web_sm"
    entity_labels: tuple[str, ...] = ()   # empty = all entity labels
    patterns: tuple[str, ...] = ()        # extra user regexes for `pattern` (builtin ones always on)
    span_labels: tuple[str, ...] = ()     # for `spans`: which labelled fields count; empty = all
    reference_model: str | None = None    # for `reference`: path/id of the reference causal LM
    tau: float = 1.0                      # nats

    def __post_init__(self) -> None:
        if not isinstance(self.policy, str) or self.policy not in SUBSET_POLICIES:
            raise InputError(f"{_FIELD}.policy: unknown policy {self.policy!r} "
                             f"(choose from {', '.join(SUBSET_POLICIES)})")
        if not isinstance(self.mode, str) or self.mode not in SUBSET_MODES:
            raise InputError(f"{_FIELD}.mode: unknown mode {self.mode!r} (choose from {', '.join(SUBSET_MODES)})")
        c = _number("soft_weight", self.soft_weight)
        if not c > 0:
            raise InputError(f"{_FIELD}.soft_weight: must be > 0, got {self.soft_weight!r}")
        tau = _number("tau", self.tau)
        if not tau >= 0:
            raise InputError(f"{_FIELD}.tau: must be >= 0 (nats), got {self.tau!r}")
        object.__setattr__(self, "soft_weight", c)
        object.__setattr__(self, "tau", tau)
        if not isinstance(self.spacy_pipeline, str) or not self.spacy_pipeline.strip():
            raise InputError(f"{_FIELD}.spacy_pipeline: must be a non-empty pipeline name or path, "
                             f"got {self.spacy_pipeline!r}")
        for name in ("entity_labels", "patterns", "span_labels"):
            object.__setattr__(self, name, _str_tuple(name, getattr(self, name)))
        for p in self.patterns:
            _compile_user_pattern(p)
        if self.reference_model is not None and (not isinstance(self.reference_model, str)
                                                 or not self.reference_model.strip()):
            raise InputError(f"{_FIELD}.reference_model: must be a model path or id, "
                             f"got {self.reference_model!r}")
        if self.policy == "reference" and self.reference_model is None:
            raise InputError(f"{_FIELD}.reference_model: policy 'reference' needs a reference model "
                             f"(path or id of a causal LM with the same tokenizer)")

    @classmethod
    def from_config(cls, section: dict[str, Any] | None) -> "SubsetSpec":
        """Build from the YAML mapping; unknown keys -> InputError naming the key."""
        if section is None:
            return cls()
        if not isinstance(section, dict):
            raise InputError(f"{_FIELD}: must be a mapping, got {type(section).__name__}")
        return from_dict(cls, section, _FIELD)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{_FIELD}.{name}: must be a finite number, got {value!r}")
    return float(value)


def _str_tuple(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{_FIELD}.{name}: must be a list of strings, got {value!r}")
    return tuple(value)


def _compile_user_pattern(pattern: str) -> re.Pattern:
    if not isinstance(pattern, str) or not pattern:
        raise InputError(f"{_FIELD}.patterns: each pattern must be a non-empty string, got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise InputError(f"{_FIELD}.patterns: invalid regular expression {pattern!r}: {e}") from None



@dataclass
class ModelConfig:
    name_or_path: str = "demo:model"
    tokenizer: str | None = None  # default: the model's own
    dtype: Literal["fp32", "bf16"] = "fp32"
    trust_remote_code: bool = False
    revision: str | None = None
    # Pickle weights (pytorch_model.bin) can run code when loaded: refused unless set (trusted models only).
    allow_pickle_weights: bool = False


@dataclass
class LoraConfig:
    enabled: bool = False
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None: a default per architecture family

    def validate(self, path: str) -> None:
        check(self.rank >= 1, f"{path}.rank", "expected an integer >= 1", self.rank)
        check(self.alpha > 0, f"{path}.alpha", "expected a number > 0", self.alpha)
        check(0 <= self.dropout < 1, f"{path}.dropout", "expected a number in [0, 1)", self.dropout)


@dataclass
class MethodConfig:
    name: str = "undial"
    gamma: float = 10.0
    subset: SubsetSpec = field(default_factory=SubsetSpec)
    retain_weight: float = 0.0  # alpha of an optional retain-set NLL term
    teacher: Literal["live", "cached"] = "live"  # live with LoRA: adapters off; cached: log-probs once
    teacher_cache_max_gb: float = 4.0
    # Baselines (trainables/methods.py); each read only by its method.
    npo_beta: float = 0.1         # NPO's inverse temperature
    simnpo_beta: float = 2.5      # SimNPO (Fan et al.: 2.5 on TOFU forget05)
    simnpo_delta: float = 0.0     # SimNPO's margin
    rmu_layer: int | None = None  # RMU's block (0-based); None: WMDP's 7 of 32 scaled to the depth
    rmu_update_layers: list[int] | None = None  # blocks whose MLP weights train; None: layer-2 .. layer
    rmu_c: float = 20.0           # RMU's steering scale (WMDP code default)
    rmu_alpha: float = 100.0      # RMU's retain hidden-state weight (WMDP code default); its frozen
                                  # model is a live copy whatever method.teacher says

    def validate(self, path: str) -> None:
        check(self.name in METHOD_NAMES, f"{path}.name", f"unknown method (choose from {', '.join(METHOD_NAMES)})",
               self.name)
        check(self.gamma >= 0, f"{path}.gamma", "expected a number >= 0", self.gamma)
        check(self.retain_weight >= 0, f"{path}.retain_weight", "expected a number >= 0", self.retain_weight)
        check(self.teacher_cache_max_gb > 0, f"{path}.teacher_cache_max_gb", "expected a number > 0",
               self.teacher_cache_max_gb)
        check(self.npo_beta > 0, f"{path}.npo_beta", "expected a number > 0", self.npo_beta)
        check(self.simnpo_beta > 0, f"{path}.simnpo_beta", "expected a number > 0", self.simnpo_beta)
        check(self.simnpo_delta >= 0, f"{path}.simnpo_delta", "expected a number >= 0", self.simnpo_delta)
        check(self.rmu_layer is None or self.rmu_layer >= 0, f"{path}.rmu_layer", "expected an integer >= 0 or null",
              self.rmu_layer)
        layers = self.rmu_update_layers
        check(layers is None or (len(layers) >= 1 and all(k >= 0 for k in layers)), f"{path}.rmu_update_layers",
              "expected a non-empty list of integers >= 0 or null", layers)
        check(layers is None or self.rmu_layer is None or max(layers) <= self.rmu_layer, f"{path}.rmu_update_layers",
              f"expected layers at or below method.rmu_layer ({self.rmu_layer})", layers)
        check(self.rmu_c > 0, f"{path}.rmu_c", "expected a number > 0", self.rmu_c)
        check(self.rmu_alpha >= 0, f"{path}.rmu_alpha", "expected a number >= 0", self.rmu_alpha)
        if self.name == "graddiff":
            check(self.retain_weight > 0, f"{path}.retain_weight",
                  "graddiff is gradient ascent plus a retain term: expected a number > 0", self.retain_weight)

    def uses_retain(self) -> bool:
        """Whether training reads data.retain: the retain NLL term, or RMU's retain hidden states."""
        return self.retain_weight > 0 or (self.name == "rmu" and self.rmu_alpha > 0)


SEQUENTIAL_FORGET = "data.forget: a list of forget sets runs as sequential requests through undial unlearn"


def single_forget(forget: str | list[str]) -> str:
    """The one forget file a worker job reads: a list of several (sequential requests) is cut
    into one job per request by the orchestrator (orchestrator/sequential.py), never read here."""
    if isinstance(forget, (list, tuple)):
        if len(forget) != 1:
            raise InputError(SEQUENTIAL_FORGET)
        return forget[0]
    return forget


@dataclass
class DataConfig:
    # A list: successive unlearning requests, each from the previous result (`undial unlearn`).
    forget: str | list[str] = "demo:data/forget.jsonl"
    retain: str | None = "demo:data/retain.jsonl"   # optional retain NLL term
    heldout: str | None = "demo:data/heldout.jsonl"  # held-out text of the retain kind: perplexity
    unseen: str | None = "demo:data/unseen.jsonl"    # never-trained forget-like records: thresholds
    prompts: str | None = "demo:data/prompts.jsonl"  # held-out prose: MAUVE prompts
    format: Literal["auto", "jsonl", "text", "parquet", "csv", "npy", "hub"] = "auto"
    text_field: str = "text"
    spans_field: str = "spans"
    question_field: str = "question"  # a file whose rows carry both is a Q&A set (answer tokens only)
    answer_field: str = "answer"
    qa_separator: str = " "           # between question and answer: a space or newline suits most tokenizers
    max_length: int = 64
    min_length: int = 8
    max_records: int | None = None  # cap for retain / heldout / prompts (eval cost)

    def validate(self, path: str) -> None:
        if isinstance(self.forget, list):
            check(len(self.forget) >= 1 and all(p.strip() for p in self.forget), f"{path}.forget",
                  "expected a file or a non-empty list of files (sequential requests)", self.forget)
            check(len(set(self.forget)) == len(self.forget), f"{path}.forget", "expected each forget set once",
                  self.forget)
            if len(self.forget) == 1:  # one request: exactly the plain string
                self.forget = self.forget[0]
        check(self.max_length >= 2, f"{path}.max_length", "expected an integer >= 2", self.max_length)
        check(1 <= self.min_length <= self.max_length, f"{path}.min_length",
               "expected an integer in [1, max_length]", self.min_length)
        check(self.max_records is None or self.max_records >= 1, f"{path}.max_records",
               "expected an integer >= 1", self.max_records)
        for name in ("question_field", "answer_field"):
            check(bool(getattr(self, name).strip()), f"{path}.{name}", "expected a field name", getattr(self, name))
        check(self.question_field != self.answer_field, f"{path}.answer_field",
              f"expected a field other than question_field ({self.question_field!r})", self.answer_field)
        check(self.text_field not in (self.question_field, self.answer_field), f"{path}.text_field",
              "expected a field other than question_field and answer_field", self.text_field)


@dataclass
class TrainConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    max_steps: int | None = 300
    epochs: float | None = None  # used when max_steps is null
    batch_size: int = 8          # global batch: micro_batch_size x grad_accum x workers
    micro_batch_size: int | None = None  # per worker and forward pass; default: batch_size / workers
    # Retain sequences a step for the retain term (default batch_size): more lowers held-out
    # perplexity per step at a fraction of a larger forget batch's cost.
    retain_batch_size: int | None = None
    max_grad_norm: float | None = 1.0
    seed: int = 0
    eval_every: int = 25
    select: Literal["best", "last"] = "best"
    max_ppl_factor: float = 1.10  # "best": lowest forget MA with held-out ppl within this factor
    stop_when: Literal["never", "threshold"] = "never"
    stop_ppl_factor: float | None = None  # early stop when held-out ppl rises past this factor
    # Give up on a run that is not forgetting: from step stop_progress_step on, stop at an eval
    # step where forget MA has come less than this share of the way from the original's to the
    # unseen set's MA (the threshold). A sweep's unpromising trials end early and still report.
    stop_min_progress: float | None = None
    # ... and at an eval step from stop_progress_step on where forget MA has come less than this
    # share of that way since the previous eval step: a run whose forgetting has stalled.
    stop_min_gain: float | None = None
    stop_progress_step: int = 100
    log_every: int = 10
    # What each eval step measures: "light" the watched figures (forget MA, held-out ppl; when
    # stopping on thresholds, EL_n once forget MA is under its threshold); "full" the whole
    # evaluation (MIA AUC, MAUVE, ...: `undial study`).
    watch: Literal["light", "full"] = "light"
    # "bf16": the training steps' forward passes under torch.autocast in bfloat16 (weights, the
    # optimiser and the losses stay float32; every evaluation runs in the model's dtype). On a
    # CPU with AVX512-BF16 a matmul runs ~3.5x faster (docs/demo.md).
    mixed_precision: Literal["no", "bf16"] = "no"

    def validate(self, path: str) -> None:
        check(self.lr > 0, f"{path}.lr", "expected a number > 0", self.lr)
        check(self.weight_decay >= 0, f"{path}.weight_decay", "expected a number >= 0", self.weight_decay)
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{path}.betas",
               "expected two numbers in [0, 1)", self.betas)
        check(self.warmup_steps >= 0, f"{path}.warmup_steps", "expected an integer >= 0", self.warmup_steps)
        check(self.max_steps is not None or self.epochs is not None, f"{path}.max_steps",
               "set max_steps or epochs", self.max_steps)
        check(self.max_steps is None or self.max_steps >= 1, f"{path}.max_steps", "expected an integer >= 1",
               self.max_steps)
        check(self.epochs is None or self.epochs > 0, f"{path}.epochs", "expected a number > 0", self.epochs)
        check(self.batch_size >= 1, f"{path}.batch_size", "expected an integer >= 1", self.batch_size)
        check(self.micro_batch_size is None or self.micro_batch_size >= 1, f"{path}.micro_batch_size",
               "expected an integer >= 1", self.micro_batch_size)
        check(self.retain_batch_size is None or self.retain_batch_size >= 1, f"{path}.retain_batch_size",
               "expected an integer >= 1", self.retain_batch_size)
        check(self.max_grad_norm is None or self.max_grad_norm > 0, f"{path}.max_grad_norm",
               "expected a number > 0", self.max_grad_norm)
        check(self.eval_every >= 1, f"{path}.eval_every", "expected an integer >= 1", self.eval_every)
        check(self.max_ppl_factor >= 1, f"{path}.max_ppl_factor", "expected a number >= 1",
               self.max_ppl_factor)
        check(self.stop_ppl_factor is None or self.stop_ppl_factor >= 1, f"{path}.stop_ppl_factor",
               "expected a number >= 1", self.stop_ppl_factor)
        check(self.stop_min_progress is None or 0 < self.stop_min_progress <= 1, f"{path}.stop_min_progress",
               "expected a number in (0, 1]", self.stop_min_progress)
        check(self.stop_min_gain is None or 0 < self.stop_min_gain <= 1, f"{path}.stop_min_gain",
               "expected a number in (0, 1]", self.stop_min_gain)
        check(self.stop_progress_step >= 1, f"{path}.stop_progress_step", "expected an integer >= 1",
               self.stop_progress_step)
        check(self.log_every >= 1, f"{path}.log_every", "expected an integer >= 1", self.log_every)


@dataclass
class MauveConfig:
    enabled: bool = True
    featurizer: str = "all-MiniLM-L6-v2"
    max_prompts: int = 200
    prompt_tokens: int = 24
    new_tokens: int = 24
    do_sample: bool = False
    # Prompts a generate call continues, each batch its own sampling stream (so changing it changes
    # the draws, not their distribution): on CPU, 128 generates the demo's 825 continuations in
    # 0.77x the time of 32 (per-token overhead).
    batch_size: int = 128
    num_buckets: int | None = None  # k-means buckets; None: the library's heuristic, samples / 10
    # Independent sampling draws: `mauve` is their mean and `mauve_sd` their spread. On the demo
    # one draw's sd is 0.014 for the original model but 0.04 for unlearned ones (docs/demo.md).
    draws: int = 1
    # Quantisations averaged per draw (k-means seeds draw seed .. + K - 1): on the demo one draw's
    # MAUVE moves by sd 0.022 with the k-means seed alone; 5 cut that to ~0.01 for ~0.15 s each.
    kmeans_seeds: int = 5

    def validate(self, path: str) -> None:
        check(self.max_prompts >= 2, f"{path}.max_prompts", "expected an integer >= 2", self.max_prompts)
        check(self.draws >= 1, f"{path}.draws", "expected an integer >= 1", self.draws)
        check(self.batch_size >= 1, f"{path}.batch_size", "expected an integer >= 1", self.batch_size)
        check(self.kmeans_seeds >= 1, f"{path}.kmeans_seeds", "expected an integer >= 1", self.kmeans_seeds)
        check(self.draws == 1 or self.do_sample, f"{path}.draws",
              "expected 1 with do_sample false (greedy continuations are the same every draw)", self.draws)
        check(self.num_buckets is None or self.num_buckets >= 2, f"{path}.num_buckets",
               "expected an integer >= 2 (or null: samples / 10)", self.num_buckets)
        check(self.prompt_tokens >= 1, f"{path}.prompt_tokens", "expected an integer >= 1", self.prompt_tokens)
        check(self.new_tokens >= 1, f"{path}.new_tokens", "expected an integer >= 1", self.new_tokens)


@dataclass
class RelearnConfig:
    """The relearning attack (trainables/relearn.py): a copy of the model fine-tuned on one half
    of the forget set, MA and EL on the other half."""
    enabled: bool = False
    steps: int = 20
    lr: float = 1e-4
    batch_size: int = 4
    lora: bool = False      # false: full fine-tuning of the copy
    lora_rank: int = 8
    seed: int = 0           # the split into halves and the batch order

    def validate(self, path: str) -> None:
        check(self.steps >= 1, f"{path}.steps", "expected an integer >= 1", self.steps)
        check(self.lr > 0, f"{path}.lr", "expected a number > 0", self.lr)
        check(self.batch_size >= 1, f"{path}.batch_size", "expected an integer >= 1", self.batch_size)
        check(self.lora_rank >= 1, f"{path}.lora_rank", "expected an integer >= 1", self.lora_rank)
        check(self.seed >= 0, f"{path}.seed", "expected an integer >= 0", self.seed)


@dataclass
class EvalConfig:
    el_n: list[int] = field(default_factory=lambda: [3, 10])
    prefix_stride: int = 1
    batch_size: int = 32
    mauve: MauveConfig = field(default_factory=MauveConfig)
    mia: bool = True
    progress: bool = False
    relearn: RelearnConfig = field(default_factory=RelearnConfig)
    retain_model: str | None = None  # never trained on the forget set: privleak, forget_quality, the ref attack
    mia_attacks: list[str] | None = None  # None: loss, zlib, min_k, min_k_pp (+ ref with retain_model)
    mia_k: float = 0.2  # Min-K% / Min-K%++: the fraction of lowest-scoring tokens

    def attacks(self) -> list[str]:
        from trainables.metric_names import mia_attacks

        return mia_attacks(self.retain_model, self.mia_attacks)

    def validate(self, path: str) -> None:
        check(len(self.el_n) >= 1 and all(n >= 1 for n in self.el_n), f"{path}.el_n",
               "expected a list of integers >= 1", self.el_n)
        check(self.prefix_stride >= 1, f"{path}.prefix_stride", "expected an integer >= 1", self.prefix_stride)
        check(self.batch_size >= 1, f"{path}.batch_size", "expected an integer >= 1", self.batch_size)
        from trainables.metric_names import MIA_ATTACKS

        for name in self.mia_attacks or []:
            check(name in MIA_ATTACKS, f"{path}.mia_attacks", f"expected attacks among {', '.join(MIA_ATTACKS)}",
                  name)
        check(self.mia_attacks is None or len(set(self.mia_attacks)) == len(self.mia_attacks),
              f"{path}.mia_attacks", "expected each attack once", self.mia_attacks)
        check("ref" not in (self.mia_attacks or []) or bool(self.retain_model), f"{path}.mia_attacks",
              "'ref' calibrates against eval.retain_model: set it (or drop ref)", self.mia_attacks)
        check(0 < self.mia_k <= 1, f"{path}.mia_k", "expected a number in (0, 1]", self.mia_k)
        check(self.retain_model is None or bool(self.retain_model.strip()), f"{path}.retain_model",
              "expected a model folder or Hub id (or null)", self.retain_model)


@dataclass
class ScalingConfig:
    num_workers: int = 1
    strategy: Literal["none", "ddp", "fsdp", "deepspeed"] = "none"
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    zero_stage: int = 2
    deepspeed_config: str | None = None  # a user DeepSpeed JSON merged over ours
    fsdp_block_class: str | None = None  # FSDP2: class name of the block to shard; None: the model's _no_split_modules

    def validate(self, path: str) -> None:
        check(self.num_workers >= 1, f"{path}.num_workers", "expected an integer >= 1", self.num_workers)
        check(self.zero_stage in (0, 1, 2, 3), f"{path}.zero_stage", "expected 0, 1, 2 or 3", self.zero_stage)
        check(self.strategy != "none" or self.num_workers == 1, f"{path}.strategy",
               "num_workers > 1 needs a strategy (ddp, fsdp or deepspeed)", self.strategy)
        check(self.fsdp_block_class is None or re.fullmatch(r"[A-Za-z_]\w*", self.fsdp_block_class) is not None,
               f"{path}.fsdp_block_class", "expected a class name (e.g. LlamaDecoderLayer)", self.fsdp_block_class)


@dataclass
class RunConfig:
    name: str = "undial"
    storage_path: str | None = None  # Ray Train storage; default <output>/ray
    checkpoint_every: int | None = None  # default: every eval
    max_failures: int = 0
    resume_from: str | None = None  # a checkpoint folder (torchrun / local runs)
    fail_at_step: int | None = None  # test hook: the last rank exits after step k (> checkpoint_every), first attempt only

    def validate(self, path: str) -> None:
        check(self.checkpoint_every is None or self.checkpoint_every >= 1, f"{path}.checkpoint_every",
               "expected an integer >= 1", self.checkpoint_every)
        check(self.max_failures >= -1, f"{path}.max_failures", "expected an integer >= -1", self.max_failures)


@dataclass
class UnlearnConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self, path: str = "") -> None:
        if self.train.stop_when == "threshold":
            check(self.data.unseen is not None, "train.stop_when",
                   "'threshold' needs data.unseen (the thresholds come from it)", self.train.stop_when)
        for key in ("stop_min_progress", "stop_min_gain"):
            if getattr(self.train, key) is not None:
                check(self.data.unseen is not None, f"train.{key}",
                      "needs data.unseen (progress is measured toward its MA)", getattr(self.train, key))
        check(self.train.mixed_precision == "no" or self.scaling.strategy != "deepspeed", "train.mixed_precision",
              "DeepSpeed sets its own precision: use a bf16 section in scaling.deepspeed_config",
              self.train.mixed_precision)
        if self.train.retain_batch_size is not None:
            check(self.method.uses_retain(), "train.retain_batch_size",
                  "has no effect without a retain term (method.retain_weight > 0)", self.train.retain_batch_size)
        if self.method.name in ("graddiff", "rmu") and self.method.uses_retain():
            check(self.data.retain is not None, "data.retain", f"method '{self.method.name}' trains on a retain set",
                  self.data.retain)
        if "grad_norm" in (self.eval.mia_attacks or []):
            sharded = self.scaling.strategy == "fsdp" or (self.scaling.strategy == "deepspeed"
                                                          and self.scaling.zero_stage == 3)
            check(not sharded, "eval.mia_attacks", "grad_norm needs whole parameters on every rank "
                  "(not fsdp or deepspeed zero_stage 3)", self.eval.mia_attacks)
        if self.method.name == "rmu":
            check(not self.lora.enabled, "lora.enabled",
                  "rmu trains the MLP weights of method.rmu_update_layers (full fine-tuning): expected false",
                  self.lora.enabled)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def uses_demo(self) -> bool:
        return any(isinstance(v, str) and v.startswith(DEMO_PREFIX) for v in leaves(self.to_dict()))


# --------------------------------------------------------------------------------------------
# Generic dict -> dataclass conversion with checked types.


def check(ok: bool, key: str, expectation: str, value: Any) -> None:
    """The one validation idiom of configs and search spaces: `key: expectation, got value`."""
    if not ok:
        raise InputError(f"{key}: {expectation}, got {value!r}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None)) + " or null"
    if origin in (list, tuple):
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise InputError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, key)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except InputError:
                pass
        raise InputError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise InputError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            if origin is tuple and isinstance(value, str):
                value = [value]
            else:
                raise InputError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        inner = get_args(tp)[0]
        items = [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"{key}: expected a mapping, got {value!r}")
        _, vt = get_args(tp)
        return {str(k): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise InputError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                raise InputError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise InputError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass `cls` from `data`, refusing unknown keys; then validate."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            full = f"{path}.{key}" if path else key
            raise InputError(f"{full}: unknown key (known: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            full = f"{path}.{f.name}" if path else f.name
            kwargs[f.name] = _convert(data[f.name], hints[f.name], full)
    try:
        obj = cls(**kwargs)
    except InputError:
        raise
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path or 'config'}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path)
    return obj


def to_plain(obj: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists: what YAML and Ray carry."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------------------------
# YAML and overrides.


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise InputError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping at the top level")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"override {item!r}: expected key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise InputError(f"{'.'.join(parts[:depth + 1])}: not a section, cannot set {key}")
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> UnlearnConfig:
    """YAML file + overrides -> validated UnlearnConfig."""
    data = read_yaml(path)
    apply_overrides(data, list(overrides or []))
    return from_dict(UnlearnConfig, data)


def resolve_demo_paths(cfg_dict: dict[str, Any], demo_dir: Path) -> dict[str, Any]:
    """Replace every "demo:REL" string with the absolute path under the built demo."""
    def resolve(value):
        if isinstance(value, str) and value.startswith(DEMO_PREFIX):
            return str(demo_dir / value[len(DEMO_PREFIX):])
        return value

    return map_leaves(cfg_dict, resolve)


def dump_yaml(cfg: UnlearnConfig | dict[str, Any]) -> str:
    data = cfg.to_dict() if isinstance(cfg, UnlearnConfig) else cfg
    return yaml.safe_dump(data, sort_keys=False)
