"""Models: a causal LM and its tokenizer from a Hub id or a local folder, LoRA
through PEFT, and the UnDIAL teacher in its three forms."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from trainables.errors import InputError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Set in processes that must never hold a model (a sweep trial's own process): a load there fails.
NO_MODEL_LOADS = "UNDIAL_NO_MODEL_LOADS"

# LoRA targets per architecture family (model.config.model_type): every linear projection of
# attention and MLP, by the module names PEFT matches. GPT-2's are Conv1D (c_proj serves both
# attention and MLP); Phi-3 fuses q/k/v (qkv_proj) and gate/up (gate_up_proj); Gemma is named
# like Llama. A family not here needs lora.target_modules, rather than PEFT's "all-linear"
# silently adapting whatever is linear there (MoE routers, extra heads).
_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "gpt_neo": ("q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"),
    "gptj": ("q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
}


def default_lora_targets(model_type: str | None) -> list[str] | None:
    """The default LoRA target module names for a model family (config.model_type), or None
    when the family has no default (then lora.target_modules must be set). Pure: no model."""
    targets = LORA_TARGETS.get(model_type or "")
    return list(targets) if targets is not None else None


def _load_error(kind: str, name: str, exc: Exception) -> InputError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = "" if Path(name).exists() else " (not a local folder; a Hub id needs network access)"
    import json

    if isinstance(exc, json.JSONDecodeError):  # its text names no file
        first = f"a JSON file in it is not valid JSON ({exc.msg}, line {exc.lineno})"
    return InputError(f"{kind}: cannot load '{name}'{hint}: {first}")


def _unreadable_errors() -> tuple[type[BaseException], ...]:
    """What loading a damaged folder raises (a config.json that is not JSON, a truncated
    safetensors file, a tokenizer.json of the wrong shape): bad input, one line."""
    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, TypeError, SafetensorError)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, revision: str | None = None,
                   key: str = "tokenizer"):
    """`key`: the config key named in errors (model.tokenizer, or model.name_or_path when the
    tokenizer is the model's own)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code,
                                                  revision=revision)
    except _unreadable_errors() as exc:
        raise _load_error(key, name_or_path, exc) from None
    if not tokenizer.is_fast:
        raise InputError(f"{key}: '{name_or_path}' has no fast tokenizer; subsets need offset mappings")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Every set is right-padded (the metrics refuse left padding); a fast tokenizer saved after a
    # left-padded call (generation) reloads with padding_side "left" from its tokenizer.json.
    tokenizer.padding_side = "right"
    return tokenizer


def load_causal_lm(name_or_path: str, dtype: str = "fp32", trust_remote_code: bool = False,
                   revision: str | None = None, device: torch.device | str = "cpu",
                   allow_pickle_weights: bool = False, key: str = "model.name_or_path"):
    """Safetensors weights only unless `allow_pickle_weights` (model.allow_pickle_weights): a
    local folder holding only pickle weights (pytorch_model.bin) is refused before loading."""
    from transformers import AutoModelForCausalLM

    from trainables.preflight import check_weights_folder

    if os.environ.get(NO_MODEL_LOADS):
        raise RuntimeError(f"{name_or_path}: a model load in a process that must load none ({NO_MODEL_LOADS} "
                           "is set: a sweep trial's process coordinates, the Ray Train workers load models)")
    if Path(name_or_path).is_dir():
        check_weights_folder(name_or_path, key, allow_pickle_weights)
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=DTYPES[dtype],
                                                     trust_remote_code=trust_remote_code, revision=revision,
                                                     use_safetensors=None if allow_pickle_weights else True)
    except _unreadable_errors() as exc:
        error = _load_error(key, name_or_path, exc)
        if not allow_pickle_weights and "safetensors" in str(exc):
            error = InputError(f"{error} (pickle weights are refused; model.allow_pickle_weights: true allows them)")
        raise error from None
    return model.to(device)


def configured_tokenizer(model_cfg):
    """The tokenizer a run config names (model.tokenizer, else the model's own), at model.revision."""
    key = "model.tokenizer" if model_cfg.tokenizer else "model.name_or_path"
    return load_tokenizer(model_cfg.tokenizer or model_cfg.name_or_path, model_cfg.trust_remote_code,
                          model_cfg.revision, key=key)


def configured_model(model_cfg, device: torch.device | str = "cpu", name_or_path: str | None = None,
                     key: str = "model.name_or_path"):
    """The causal LM a run config names (or `name_or_path` with the config's dtype, revision and
    pickle rule: the reference model), on `device`."""
    return load_causal_lm(name_or_path or model_cfg.name_or_path, model_cfg.dtype, model_cfg.trust_remote_code,
                          model_cfg.revision, device=device, allow_pickle_weights=model_cfg.allow_pickle_weights,
                          key=key)


def apply_lora(model, lora_cfg):
    """Wrap `model` with LoRA adapters (PEFT); the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    targets = lora_cfg.target_modules or default_lora_targets(model.config.model_type)
    if targets is None:
        raise InputError(f"lora.target_modules: no default LoRA targets for model family "
                         f"'{model.config.model_type}'; set lora.target_modules (e.g. [q_proj, v_proj])")
    # GPT-2's projections are Conv1D (weights stored transposed); PEFT would flip this itself, warning.
    peft_cfg = LoraConfig(r=lora_cfg.rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                          target_modules=targets, task_type="CAUSAL_LM",
                          fan_in_fan_out=model.config.model_type == "gpt2")
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as exc:
        raise InputError(f"lora.target_modules: {str(exc).splitlines()[0]}") from None


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def parameter_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Teachers: callables (input_ids, attention_mask, example_index) -> logits [B, T, V], no grad.


class AdapterOffTeacher:
    """LoRA: the base model is the teacher; adapters are switched off for its forward pass."""

    kind = "adapters-off"

    def __init__(self, peft_model, forward=None):
        self.peft_model = peft_model
        self.forward = forward or peft_model

    @torch.no_grad()
    def __call__(self, input_ids, attention_mask, example_index=None):
        # Eval mode for the teacher's pass (no dropout), as the frozen copy and the cache have.
        # The flag is read from the PEFT model: a DeepSpeed engine's own .training goes stale.
        was_training = self.peft_model.training
        self.forward.train(False)
        try:
            with self.peft_model.disable_adapter():
                return self.forward(input_ids=input_ids, attention_mask=attention_mask).logits
        finally:
            self.forward.train(was_training)


class FrozenCopyTeacher:
    """Full fine-tuning: a frozen, eval-mode copy of the model as it was at step 0."""

    kind = "live"

    def __init__(self, model):
        self.model = model.eval().requires_grad_(False)

    @classmethod
    def copy_of(cls, model):
        return cls(copy.deepcopy(model))

    @torch.no_grad()
    def __call__(self, input_ids, attention_mask, example_index=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    @torch.no_grad()
    def hidden_states(self, input_ids, attention_mask, index: int):
        """hidden_states[index] of the frozen model (0: the embeddings, k: block k-1's output):
        RMU's retain target."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states[index]


def teacher_cache_bytes(num_sequences: int, seq_len: int, vocab_size: int) -> int:
    return num_sequences * seq_len * vocab_size * 2  # float16


class CachedTeacher:
    """Teacher log-probabilities over the whole forget set, computed once: with the model before
    training (full fine-tuning) or the base model before its adapters are added (LoRA).

    Stored in float16 (B*T*V*2 bytes); log-probabilities stand in for logits because the
    adjusted target softmax(z - gamma*onehot) is invariant to a per-row shift.
    """

    kind = "cached"

    def __init__(self, logprobs: torch.Tensor):
        self.logprobs = logprobs

    @classmethod
    @torch.no_grad()
    def compute(cls, model, input_ids, attention_mask, max_gb: float, batch_size: int = 16, log=print):
        vocab = model.get_output_embeddings().weight.shape[0]
        need = teacher_cache_bytes(input_ids.shape[0], input_ids.shape[1], vocab)
        log(f"teacher cache: {input_ids.shape[0]} x {input_ids.shape[1]} x {vocab} x 2 bytes = "
            f"{need / 2**20:.1f} MiB (cap {max_gb} GiB)")
        if need > max_gb * 2**30:
            raise InputError(f"method.teacher_cache_max_gb: the cached teacher needs {need / 2**30:.2f} GiB, "
                             f"over the cap of {max_gb} GiB; use method.teacher=live or raise the cap")
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        chunks = []
        for start in range(0, input_ids.shape[0], batch_size):
            logits = model(input_ids=input_ids[start:start + batch_size].to(device),
                           attention_mask=attention_mask[start:start + batch_size].to(device)).logits
            chunks.append(torch.log_softmax(logits.float(), dim=-1).clamp_min(-60000).half().cpu())
        model.train(was_training)
        return cls(torch.cat(chunks))

    def __call__(self, input_ids, attention_mask, example_index):
        return self.logprobs[example_index.cpu()].to(input_ids.device)
