"""`undial plan`: per-GPU memory of a run config or a search space, per strategy, and the
strategy and worker count that fit.

Pure arithmetic over the model's shape (no torch, no weights): the shape comes from the
model's config.json (a local folder, a built `demo:` model, or the Hugging Face cache; never
the network), from the built-in table of named shapes (SHAPES; also keyed by Hub id, so the
shipped configs plan offline), or from --params / --layers / --hidden / --vocab overrides.

What is counted, per worker (one GPU), with P parameters, P_t trainable ones, N workers,
w = 4 (fp32) or 2 (bf16) bytes per weight:

- weights: P * w (LoRA adapters: fp32, PEFT casts bf16 adapters up);
- gradients: P_t * g, g the trainable parameters' bytes; DDP adds its gradient buckets (+1x);
- optimiser: torch AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype: 2 * P_t * g.
  DeepSpeed with bf16 keeps fp32 master weights and fp32 moments: 12 bytes per trainable
  parameter (ZeRO's K = 12), and bf16 gradients;
- teacher: LoRA, live: 0 (adapters off on the same weights); full fine-tuning, live: a frozen
  copy (P * w, sharded like the student under fsdp / ZeRO-3); cached: the log-probabilities
  (N_forget * T * V * 2 bytes, float16) live in host memory on every worker, and one
  micro-batch slice (m * T * V * 2) is moved to the GPU per step;
- activations at micro-batch m and length T (Korthikanti et al. 2022, 16-bit activations, no
  recomputation, the attention scores kept, so an upper estimate for fused attention):
  per layer  T * m * (c_h * h + c_I * I + 5 * a * T) bytes, (c_h, c_I) = (18, 4) for a GELU
  MLP (34 * h at I = 4h) and (17, 8) for a gated (SwiGLU) MLP; doubled for fp32 compute;
  plus the logits: m * T * V * (2 * act_bytes + 4) (student and teacher logits, the loss's
  fp32 gradient of the student's); with a retain term, the retain micro-batch's forward too
  (m_r = m * retain_batch_size / batch_size: its graph lives until the one backward), with the
  student's logits only: m_r * T * V * (act_bytes + 4);
- gathered (transient): fsdp / ZeRO-3 hold the root (embeddings) and two blocks unsharded in
  bf16 at a time, and one block's unsharded fp32 gradient before its reduce-scatter; with one
  worker FSDP2 keeps every block gathered (P * 2);
- setup peak: each worker loads the whole model onto its GPU before sharding (P * w), the
  full fine-tuning frozen copy is made before sharding too (another P * w), and the cached
  teacher runs the whole model over 16 records at a time (16 * T * V * (w + 8)).

Sharding: none / ddp replicate everything; fsdp and ZeRO-3 divide weights, gradients and
optimiser state by N; ZeRO-2 divides gradients and optimiser state; ZeRO-1 the optimiser
state. Need = max(steady state, setup peak); it fits when need <= gpu_memory * (1 - headroom)
(the headroom covers the CUDA context, allocator fragmentation and what is not counted).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from trainables.config import DEMO_PREFIX, UnlearnConfig, apply_overrides, from_dict, read_yaml
from trainables.errors import InputError

GIB = 2**30
DEFAULT_HEADROOM = 0.15
CACHE_BATCH = 16          # CachedTeacher.compute's batch size
DS_BUCKET = 500_000_000   # DeepSpeed's default reduce / allgather bucket (elements)
DS3_BUCKET = 50_000_000   # ZeRO-3 prefetch bucket (elements)
STRATEGIES = ("ddp", "fsdp", "zero2", "zero3")
# Search-space keys whose values change memory: one table per distinct combination.
MEMORY_KEYS = ("model.name_or_path", "model.dtype", "lora.enabled", "lora.rank", "lora.target_modules",
               "method.name", "method.teacher", "method.retain_weight", "data.max_length", "train.batch_size",
               "train.micro_batch_size", "train.retain_batch_size", "scaling.strategy", "scaling.num_workers",
               "scaling.zero_stage")


# --------------------------------------------------------------------------------------------
# Model shapes


@dataclass(frozen=True)
class Shape:
    """What the arithmetic needs of a causal LM. family: gpt_neo | gpt2 | gpt_neox | llama
    (llama-like: gated MLP, RMSNorm, rotary; also mistral, qwen2)."""

    family: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    kv_heads: int | None = None
    positions: int = 0          # learned position embeddings (0: rotary)
    tied: bool = True
    qkv_bias: bool = False      # llama-like only (qwen2: true)
    params_override: int | None = None
    source: str = ""

    @property
    def gated(self) -> bool:
        return self.family == "llama"

    def linears(self) -> list[tuple[str, int, int, bool]]:
        """One block's linear layers: (module name as PEFT matches it, in, out, bias)."""
        h, i = self.hidden, self.intermediate
        if self.family == "gpt_neo":
            return [("q_proj", h, h, False), ("k_proj", h, h, False), ("v_proj", h, h, False),
                    ("out_proj", h, h, True), ("c_fc", h, i, True), ("c_proj", i, h, True)]
        if self.family == "gpt2":
            return [("c_attn", h, 3 * h, True), ("c_proj", h, h, True), ("c_fc", h, i, True),
                    ("c_proj", i, h, True)]
        if self.family == "gpt_neox":
            return [("query_key_value", h, 3 * h, True), ("dense", h, h, True), ("dense_h_to_4h", h, i, True),
                    ("dense_4h_to_h", i, h, True)]
        kv = (self.kv_heads or self.heads) * (h // self.heads)
        b = self.qkv_bias
        return [("q_proj", h, h, b), ("k_proj", h, kv, b), ("v_proj", h, kv, b), ("o_proj", h, h, False),
                ("gate_proj", h, i, False), ("up_proj", h, i, False), ("down_proj", i, h, False)]

    def norms_per_block(self) -> int:
        return self.hidden * (2 if self.family == "llama" else 4)  # RMSNorm: weight; LayerNorm: weight + bias

    def block_params(self) -> int:
        return sum(n_in * n_out + (n_out if bias else 0) for _, n_in, n_out, bias in self.linears()) \
            + self.norms_per_block()

    def root_params(self) -> int:
        """Embeddings, position embeddings, final norm and an untied LM head."""
        h = self.hidden
        final_norm = h if self.family == "llama" else 2 * h
        return self.vocab * h * (1 if self.tied else 2) + self.positions * h + final_norm

    def params(self) -> int:
        if self.params_override is not None:
            return self.params_override
        return self.layers * self.block_params() + self.root_params()

    def lora_params(self, rank: int, targets: Sequence[str] | None = None) -> int:
        """LoRA A (r x in) and B (out x r) on every targeted linear of every block; default
        targets: every linear projection of attention and MLP (trainables.models.LORA_TARGETS)."""
        chosen = [(n_in, n_out) for name, n_in, n_out, _ in self.linears() if targets is None or name in targets]
        return self.layers * sum(rank * (n_in + n_out) for n_in, n_out in chosen)

    def describe(self) -> str:
        kv = f", {self.kv_heads} kv heads" if self.kv_heads and self.kv_heads != self.heads else ""
        return (f"{self.family}, {_count(self.params())} parameters, {self.layers} layers, hidden {self.hidden}, "
                f"{self.heads} heads{kv}, MLP {self.intermediate}, vocab {self.vocab}")


def _neo(hidden, layers, heads):
    return Shape("gpt_neo", 50257, hidden, layers, heads, 4 * hidden, positions=2048, source="built-in shape")


def _llama(vocab, hidden, layers, heads, kv, inter, tied=False):
    return Shape("llama", vocab, hidden, layers, heads, inter, kv_heads=kv, tied=tied, source="built-in shape")


# Named shapes, by short name and by Hub id (lower case): what the README's tables use.
SHAPES: dict[str, Shape] = {
    "gpt-neo-125m": _neo(768, 12, 12),
    "gpt-neo-1.3b": _neo(2048, 24, 16),
    "gpt-neo-2.7b": _neo(2560, 32, 20),
    "llama-7b": _llama(32000, 4096, 32, 32, 32, 11008),
    "llama-3-8b": _llama(128256, 4096, 32, 32, 8, 14336),
}
_HUB_IDS = {"eleutherai/gpt-neo-125m": "gpt-neo-125m", "eleutherai/gpt-neo-1.3b": "gpt-neo-1.3b",
            "eleutherai/gpt-neo-2.7b": "gpt-neo-2.7b", "meta-llama/llama-2-7b-hf": "llama-7b",
            "huggyllama/llama-7b": "llama-7b", "meta-llama/meta-llama-3-8b": "llama-3-8b",
            "meta-llama/llama-3.1-8b": "llama-3-8b"}


def named_shape(name: str) -> Shape | None:
    key = name.strip().lower()
    key = _HUB_IDS.get(key, key)
    shape = SHAPES.get(key)
    return None if shape is None else replace(shape, source=f"built-in shape {key}")


def shape_from_config_json(data: dict, source: str, key: str = "model.name_or_path") -> Shape:
    """A Shape from a Hugging Face config.json's fields (the families the planner knows)."""
    family = data.get("model_type")
    try:
        if family == "gpt_neo":
            h = int(data["hidden_size"])
            return Shape("gpt_neo", int(data["vocab_size"]), h, int(data["num_layers"]), int(data["num_heads"]),
                         int(data.get("intermediate_size") or 4 * h),
                         positions=int(data.get("max_position_embeddings", 2048)), source=source)
        if family == "gpt2":
            h = int(data["n_embd"])
            return Shape("gpt2", int(data["vocab_size"]), h, int(data["n_layer"]), int(data["n_head"]),
                         int(data.get("n_inner") or 4 * h), positions=int(data.get("n_positions", 1024)),
                         source=source)
        if family == "gpt_neox":
            return Shape("gpt_neox", int(data["vocab_size"]), int(data["hidden_size"]),
                         int(data["num_hidden_layers"]), int(data["num_attention_heads"]),
                         int(data["intermediate_size"]), tied=bool(data.get("tie_word_embeddings", False)),
                         source=source)
        if family in ("llama", "mistral", "qwen2"):
            heads = int(data["num_attention_heads"])
            return Shape("llama", int(data["vocab_size"]), int(data["hidden_size"]), int(data["num_hidden_layers"]),
                         heads, int(data["intermediate_size"]),
                         kv_heads=int(data.get("num_key_value_heads") or heads),
                         tied=bool(data.get("tie_word_embeddings", False)),
                         qkv_bias=family == "qwen2" or bool(data.get("attention_bias", False)), source=source)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{key}: {source} lacks a usable {exc} for model family '{family}'") from None
    raise InputError(f"{key}: model family '{family}' ({source}) is not in the planner's table "
                     f"(known: gpt_neo, gpt2, gpt_neox, llama, mistral, qwen2); pass --shape or "
                     f"--params --layers --hidden --vocab")


def _read_config_json(path: Path, key: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{key}: {path} is not a readable config.json ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise InputError(f"{key}: {path} does not hold a JSON object")
    return data


def _cached_config_json(repo_id: str, revision: str | None) -> Path | None:
    """config.json of a Hub id from the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # an id the cache layer refuses (bad characters): not cached
        return None
    return Path(found) if isinstance(found, str) else None


def resolve_shape(name_or_path: str, revision: str | None = None, key: str = "model.name_or_path") -> Shape:
    """The model's shape: a local folder's config.json, a built demo's, the Hub cache's, or a
    built-in named shape. Refused in one line when none is available offline."""
    if name_or_path.startswith(DEMO_PREFIX):
        import os

        from trainables.config import resolve_demo_paths
        from trainables.demo import default_demo_dir  # path arithmetic; imports no torch

        demo_dir = default_demo_dir(size=os.environ.get("UNDIAL_DEMO_SIZE") or "full")
        resolved = resolve_demo_paths({"p": name_or_path}, demo_dir)["p"]
        config = Path(resolved) / "config.json"
        if not config.is_file():
            raise InputError(f"{key}: '{name_or_path}' needs the demo, which is not built "
                             f"(run `undial demo` first, or pass --shape)")
        return shape_from_config_json(_read_config_json(config, key), str(config), key)
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        config = local / "config.json"
        if not config.is_file():
            raise InputError(f"{key}: {local} has no config.json")
        return shape_from_config_json(_read_config_json(config, key), str(config), key)
    cached = _cached_config_json(name_or_path, revision)
    if cached is not None:
        return shape_from_config_json(_read_config_json(cached, key), f"{name_or_path} (Hugging Face cache)", key)
    named = named_shape(name_or_path)
    if named is not None:
        return named
    raise InputError(f"{key}: '{name_or_path}' is not a local folder, not in the Hugging Face cache and not a "
                     f"built-in shape ({', '.join(SHAPES)}); pass --shape NAME or --params --layers --hidden --vocab")


def apply_shape_overrides(shape: Shape | None, *, params: float | None = None, layers: int | None = None,
                          hidden: int | None = None, vocab: int | None = None, heads: int | None = None,
                          intermediate: int | None = None) -> Shape | None:
    """--params / --layers / ... over a shape (or a GPT-Neo-like one built from them alone)."""
    given = {k: v for k, v in dict(layers=layers, hidden=hidden, vocab=vocab, heads=heads,
                                    intermediate=intermediate).items() if v is not None}
    for name, value in given.items():
        if value < 1:
            raise InputError(f"--{name}: expected an integer >= 1, got {value}")
    if params is not None and not (math.isfinite(params) and params >= 1):
        raise InputError(f"--params: expected a parameter count like 1.3e9, got {params}")
    if shape is None:
        missing = [n for n in ("layers", "hidden", "vocab") if n not in given]
        if missing:
            return None
        h = given["hidden"]
        shape = Shape("gpt_neo", given["vocab"], h, given["layers"], given.get("heads", max(1, h // 128)),
                      given.get("intermediate", 4 * h), positions=2048, source="--layers/--hidden/--vocab")
        given = {}
    if given:
        shape = replace(shape, **given, source=shape.source + " with overrides")
    if params is not None:
        shape = replace(shape, params_override=int(params), source=shape.source + f", --params {params:g}")
    return shape


# --------------------------------------------------------------------------------------------
# The arithmetic


@dataclass(frozen=True)
class RunShape:
    """The memory-relevant part of a run config."""

    dtype: str = "fp32"
    lora_rank: int | None = None          # None: full fine-tuning
    lora_targets: tuple[str, ...] | None = None
    teacher: str = "live"                 # live | cached | none (a method without a teacher)
    micro_batch: int = 1
    retain_ratio: float = 0.0             # retain sequences per forget one in a step (0: no retain term)
    length: int = 64
    forget_records: int | None = None
    strategy: str = "none"
    workers: int = 1
    zero_stage: int = 2
    micro_batch_fixed: bool = True        # train.micro_batch_size set (else batch_size / workers)

    @property
    def weight_bytes(self) -> int:
        return 4 if self.dtype == "fp32" else 2


@dataclass
class Estimate:
    strategy: str
    workers: int
    rows: dict[str, int] = field(default_factory=dict)   # component -> bytes per GPU
    setup: int = 0
    host_cache: int | None = None

    @property
    def steady(self) -> int:
        return sum(self.rows.values())

    @property
    def need(self) -> int:
        return max(self.steady, self.setup)


def trainable_params(shape: Shape, run: RunShape) -> int:
    return shape.params() if run.lora_rank is None else shape.lora_params(run.lora_rank, run.lora_targets)


def activation_bytes(shape: Shape, micro_batch: int, length: int, act_bytes: int = 2,
                     teacher_logits: bool = True) -> int:
    """Per worker: layers * T*m*(c_h*h + c_I*I + 5*a*T) * act_bytes/2 + logits m*T*V*(2*act_bytes + 4)
    (without the teacher's: m*T*V*(act_bytes + 4))."""
    c_h, c_i = (17, 8) if shape.gated else (18, 4)
    per_layer = length * micro_batch * (c_h * shape.hidden + c_i * shape.intermediate + 5 * shape.heads * length)
    blocks = shape.layers * per_layer * act_bytes // 2
    logits = micro_batch * length * shape.vocab * ((2 if teacher_logits else 1) * act_bytes + 4)
    return blocks + logits


def estimate(shape: Shape, run: RunShape, strategy: str, workers: int) -> Estimate:
    """Bytes per GPU of one worker of `workers` under `strategy` (none | ddp | fsdp | zero1/2/3)."""
    n = max(1, workers)
    w = run.weight_bytes
    p = shape.params()
    lora = run.lora_rank is not None
    p_t = trainable_params(shape, run)
    g = 4 if lora else w                    # PEFT keeps adapters in fp32
    stage = int(strategy[4:]) if strategy.startswith("zero") else None
    shard_weights = strategy == "fsdp" or stage == 3
    est = Estimate(strategy, n)

    weights = p * w + (p_t * 4 if lora else 0)
    if stage is not None and w == 2:
        # DeepSpeed, bf16: bf16 gradients, fp32 master weights + fp32 moments (ZeRO's K = 12)
        grads, optim = p_t * 2, p_t * 12
    else:
        grads = p_t * g
        optim = p_t * 2 * g                 # torch AdamW: exp_avg, exp_avg_sq in the parameter's dtype
    if shard_weights:
        weights //= n
    if strategy == "fsdp" or (stage is not None and stage >= 2):
        grads //= n
    if strategy == "fsdp" or (stage is not None and stage >= 1):
        optim //= n
    est.rows["weights"] = weights
    est.rows["gradients"] = grads
    est.rows["optimizer (AdamW)"] = optim

    comm = 0
    if strategy == "ddp" and n > 1:
        comm = p_t * g                      # DDP's gradient buckets (gradient_as_bucket_view off)
    elif stage in (1, 2) and n > 1:
        comm = 2 * min(p_t, DS_BUCKET) * 2
    elif stage == 3 and n > 1:
        comm = 2 * min(p, DS3_BUCKET) * 2
    if comm:
        est.rows["comm buffers"] = comm

    # teacher
    act = 2 if (strategy == "fsdp" or w == 2) else 4   # FSDP2 computes in bf16 on GPU
    teacher = 0
    if run.teacher == "live" and not lora:
        teacher = p * w // (n if shard_weights else 1)
    elif run.teacher == "cached":
        teacher = run.micro_batch * run.length * shape.vocab * 2
        if run.forget_records is not None:
            est.host_cache = run.forget_records * run.length * shape.vocab * 2
    est.rows["teacher"] = teacher

    est.rows["activations"] = activation_bytes(shape, run.micro_batch, run.length, act)
    if run.retain_ratio:
        retain_micro = max(1, round(run.micro_batch * run.retain_ratio))
        est.rows["retain activations"] = activation_bytes(shape, retain_micro, run.length, act, teacher_logits=False)

    gathered = 0
    if shard_weights:
        if strategy == "fsdp" and n == 1:
            gathered = p * 2                # one worker: every block stays gathered (bf16)
        else:
            gathered = (shape.root_params() + 2 * shape.block_params()) * 2
            if not lora:
                gathered += shape.block_params() * 4   # one block's unsharded fp32 gradient
    est.rows["gathered (transient)"] = gathered

    setup = p * w + (p * w if run.teacher == "live" and not lora else 0)
    if run.teacher == "cached":
        setup += CACHE_BATCH * run.length * shape.vocab * (w + 8)
    est.setup = setup
    return est


def worker_counts(gpus_per_node: int, max_nodes: int = 8) -> list[int]:
    """Candidate worker counts: powers of two within a node, then whole nodes."""
    within = [2**k for k in range(0, 12) if 2**k <= gpus_per_node]
    if gpus_per_node not in within:
        within.append(gpus_per_node)
    return within + [gpus_per_node * k for k in range(2, max_nodes + 1)]


def smallest_fit(shape: Shape, run: RunShape, strategy: str, usable: int, gpus_per_node: int,
                 batch_size: int | None) -> int | None:
    for n in worker_counts(gpus_per_node):
        r = run if run.micro_batch_fixed else replace(run, micro_batch=max(1, (batch_size or n) // n))
        if estimate(shape, r, strategy, n).need <= usable:
            return n
    return None


def run_shape(cfg: UnlearnConfig, forget_records: int | None = None, workers: int | None = None) -> RunShape:
    n = workers or cfg.scaling.num_workers
    micro = cfg.train.micro_batch_size or max(1, cfg.train.batch_size // n)
    teacher = cfg.method.teacher if cfg.method.name == "undial" else "none"
    rs = RunShape(dtype=cfg.model.dtype, lora_rank=cfg.lora.rank if cfg.lora.enabled else None,
                  lora_targets=tuple(cfg.lora.target_modules) if cfg.lora.target_modules else None,
                  teacher=teacher, micro_batch=micro, length=cfg.data.max_length, forget_records=forget_records,
                  retain_ratio=((cfg.train.retain_batch_size or cfg.train.batch_size) / cfg.train.batch_size
                                if cfg.method.uses_retain() else 0.0),
                  strategy=cfg.scaling.strategy, workers=n, zero_stage=cfg.scaling.zero_stage,
                  micro_batch_fixed=cfg.train.micro_batch_size is not None)
    return rs


def count_records(path: str | list[str] | None) -> int | None:
    """Records in a local forget file (JSON Lines, text, .npy), or None when not readable here.

    Sequential requests (a list) are planned for the largest one: each runs as its own job."""
    if isinstance(path, list):
        counts = [count_records(p) for p in path]
        return None if not counts or None in counts else max(counts)
    if not path or path.startswith(DEMO_PREFIX):
        return None
    p = Path(path)
    if not p.is_file():
        return None
    if p.suffix == ".npy":
        try:
            import numpy as np

            return int(np.load(p, mmap_mode="r").shape[0])
        except (OSError, ValueError):
            return None
    if p.suffix in (".jsonl", ".txt", ".json", ""):
        with p.open("rb") as f:
            return sum(1 for line in f if line.strip())
    return None


# --------------------------------------------------------------------------------------------
# Tables


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}" if n / scale < 100 else f"{n / scale:.0f}{unit}"
    return str(n)


def _gib(b: int) -> str:
    return f"{b / GIB:.2f}"


def _strategy_label(strategy: str, n: int) -> str:
    return f"{strategy} x{n}"


def plan_table(title: str, model_name: str, shape: Shape, cfg: UnlearnConfig, *, gpus_per_node: int,
               gpu_memory_gib: float, headroom: float = DEFAULT_HEADROOM, workers: int | None = None,
               forget_records: int | None = None) -> str:
    run = run_shape(cfg, forget_records, workers)
    n = run.workers
    usable = int(gpu_memory_gib * GIB * (1 - headroom))
    columns = list(STRATEGIES)
    configured = _configured(run)
    if configured == "none":
        columns[0] = "none"             # one worker: ddp is the same thing
    elif configured not in columns:
        columns.insert(0, configured)
    ests = [estimate(shape, run, s, 1 if s == "none" else n) for s in columns]

    p_t = trainable_params(shape, run)
    lora = (f"LoRA r={run.lora_rank}: {_count(p_t)} trainable (fp32 adapters)" if run.lora_rank is not None
            else f"full fine-tuning: {_count(p_t)} trainable")
    teacher = {"live": "live, adapters off" if run.lora_rank is not None else "live, frozen copy",
               "cached": "cached log-probs", "none": "none"}[run.teacher]
    lines = [f"== {title}",
             f"model    {model_name} ({shape.source}): {shape.describe()}",
             f"run      {lora}; {run.dtype}; teacher {teacher}; micro-batch {run.micro_batch} x {run.length} tokens",
             f"GPUs     {gpu_memory_gib:g} GiB each, {gpus_per_node} per node; usable "
             f"{usable / GIB:.1f} GiB ({headroom:.0%} headroom)",
             ""]
    head = f"{'per GPU, GiB':<22}" + "".join(f"{_strategy_label(e.strategy, e.workers):>11}" for e in ests)
    lines.append(head)
    names = []
    for e in ests:
        names.extend(k for k in e.rows if k not in names)
    for name in names:
        lines.append(f"{name:<22}" + "".join(f"{_gib(e.rows.get(name, 0)):>11}" for e in ests))
    lines.append(f"{'steady total':<22}" + "".join(f"{_gib(e.steady):>11}" for e in ests))
    lines.append(f"{'setup peak (load)':<22}" + "".join(f"{_gib(e.setup):>11}" for e in ests))
    lines.append(f"{'need':<22}" + "".join(f"{_gib(e.need):>11}" for e in ests))
    lines.append(f"{'fits':<22}" + "".join(f"{'yes' if e.need <= usable else 'NO':>11}" for e in ests))
    fits_at = {s: smallest_fit(shape, run, s, usable, gpus_per_node, cfg.train.batch_size) for s in columns}
    lines.append(f"{'smallest N that fits':<22}" + "".join(
        f"{(str(fits_at[e.strategy]) if fits_at[e.strategy] else '-'):>11}" for e in ests))
    if run.teacher == "cached":
        host = ests[0].host_cache
        lines.append(f"host RAM per worker: cached teacher "
                     f"{_gib(host) + ' GiB' if host is not None else 'N_forget x T x V x 2 bytes (forget set not readable here; --forget-records N)'}"
                     f" (x{min(n, gpus_per_node)} workers per node)")
    own = ests[columns.index(configured)]
    ddp = estimate(shape, run, "ddp" if n > 1 else "none", n)
    lines.append(recommendation(run, usable, gpus_per_node, own, ddp, fits_at))
    return "\n".join(lines)


def _configured(run: RunShape) -> str:
    if run.strategy == "deepspeed":
        return f"zero{run.zero_stage}"
    return run.strategy


def recommendation(run: RunShape, usable: int, gpus_per_node: int, configured: Estimate, ddp: Estimate,
                   fits_at: dict[str, int | None]) -> str:
    """ddp when one GPU holds a whole replica (no sharding traffic), at the config's worker count;
    else fsdp at the smallest worker count that fits, preferably within one node."""
    own = (f"the config's {_strategy_label(configured.strategy, configured.workers)} needs "
           f"{_gib(configured.need)} GiB: {'fits' if configured.need <= usable else 'does NOT fit'}")
    if ddp.need <= usable:
        n = ddp.workers
        choice = "none x1" if n == 1 else f"ddp x{n}"
        why = "a whole replica fits on one GPU: no sharding needed"
    elif fits_at.get("fsdp") is not None:
        n = fits_at["fsdp"]
        choice = f"fsdp x{n}"
        where = f"{gpus_per_node // n} trials per node" if n <= gpus_per_node else f"{math.ceil(n / gpus_per_node)} nodes per trial"
        why = f"the smallest sharded worker count that fits, {where}"
    elif fits_at.get("zero3") is not None:
        n = fits_at["zero3"]
        choice, why = f"deepspeed zero_stage 3 x{n}", "the smallest worker count that fits"
    else:
        return f"recommended: nothing fits in {usable / GIB:.1f} GiB per GPU up to {worker_counts(gpus_per_node)[-1]} " \
               f"workers; lower data.max_length / train.micro_batch_size, use LoRA or method.teacher=cached ({own})"
    return f"recommended: {choice}: {why}; {own}"


# --------------------------------------------------------------------------------------------
# Configs and spaces


def _is_space(raw: dict) -> bool:
    return "parameters" in raw or "base_config" in raw


def space_configs(path: str, overrides: Sequence[str]) -> tuple[str, list[tuple[str, UnlearnConfig]]]:
    """One run config per distinct combination of the memory-relevant parameters' values
    (a choice's values, a range's ends)."""
    from orchestrator.space import apply_params, load_space

    space = load_space(path, overrides)
    params = [p for p in space.parameters if p.key in MEMORY_KEYS]
    combos = list(itertools.product(*[p.probes() for p in params])) if params else [()]
    out = []
    for combo in combos:
        values = dict(zip([p.key for p in params], combo))
        data = apply_params(space.base, values)
        try:
            cfg = from_dict(UnlearnConfig, data)
        except InputError as exc:
            raise InputError(f"{path}: {', '.join(f'{k}={v}' for k, v in values.items())}: {exc}") from None
        label = ", ".join(f"{k}={v}" for k, v in values.items()) or "base"
        out.append((label, cfg))
    return space.name, out


def plan(path: str, overrides: Sequence[str] = (), *, gpus_per_node: int = 8, gpu_memory_gib: float = 80.0,
         headroom: float = DEFAULT_HEADROOM, shape_name: str | None = None, params: float | None = None,
         layers: int | None = None, hidden: int | None = None, vocab: int | None = None, heads: int | None = None,
         intermediate: int | None = None, workers: int | None = None, forget_records: int | None = None) -> str:
    """The plan tables for a run config or a search space (one table per memory-distinct
    combination of its parameters)."""
    if gpus_per_node < 1:
        raise InputError(f"--gpus-per-node: expected an integer >= 1, got {gpus_per_node}")
    if not (math.isfinite(gpu_memory_gib) and gpu_memory_gib > 0):
        raise InputError(f"--gpu-memory: expected GiB > 0, got {gpu_memory_gib}")
    if not 0 <= headroom < 1:
        raise InputError(f"--headroom: expected a fraction in [0, 1), got {headroom}")
    if workers is not None and workers < 1:
        raise InputError(f"--workers: expected an integer >= 1, got {workers}")
    raw = read_yaml(path)  # missing / not YAML / not a mapping: one line naming the file
    if _is_space(raw):
        title, configs = space_configs(path, overrides)
        configs = [(f"{path} [{label}]", cfg) for label, cfg in configs]
    else:
        apply_overrides(raw, list(overrides))
        try:
            configs = [(path, from_dict(UnlearnConfig, raw))]
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
    override_shape = None
    if shape_name is not None:
        override_shape = named_shape(shape_name)
        if override_shape is None:
            raise InputError(f"--shape: unknown shape '{shape_name}' (known: {', '.join(SHAPES)})")
    tables = []
    shapes: dict[str, Shape] = {}
    for title, cfg in configs:
        name = cfg.model.name_or_path
        base = override_shape
        if base is None and not (params is not None and None not in (layers, hidden, vocab)):
            if name not in shapes:
                shapes[name] = resolve_shape(name, cfg.model.revision)
            base = shapes[name]
        shape = apply_shape_overrides(base, params=params, layers=layers, hidden=hidden, vocab=vocab, heads=heads,
                                      intermediate=intermediate)
        if shape is None:
            raise InputError("--params: give --layers, --hidden and --vocab with it (or --shape NAME)")
        records = forget_records if forget_records is not None else count_records(cfg.data.forget)
        tables.append(plan_table(title, shape_name or name, shape, cfg, gpus_per_node=gpus_per_node,
                                 gpu_memory_gib=gpu_memory_gib, headroom=headroom, workers=workers,
                                 forget_records=records))
    return "\n\n".join(tables)
