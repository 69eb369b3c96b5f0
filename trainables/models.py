"""Models: a causal LM and its tokenizer from a Hub id or a local folder, LoRA
through PEFT, and the UnDIAL teacher in its three forms."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from trainables.errors import InputError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# LoRA targets per architecture family (model.config.model_type); others use PEFT's "all-linear".
LORA_TARGETS = {
    "gpt_neo": ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gptj": ["q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


def _load_error(kind: str, name: str, exc: Exception) -> InputError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = "" if Path(name).exists() else " (not a local folder; a Hub id needs network access)"
    return InputError(f"{kind}: cannot load '{name}'{hint}: {first}")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code,
                                                  revision=revision)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error("tokenizer", name_or_path, exc) from None
    if not tokenizer.is_fast:
        raise InputError(f"tokenizer: '{name_or_path}' has no fast tokenizer; subsets need offset mappings")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str, dtype: str = "fp32", trust_remote_code: bool = False,
                   revision: str | None = None, device: torch.device | str = "cpu"):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=DTYPES[dtype],
                                                     trust_remote_code=trust_remote_code,
                                                     revision=revision, use_safetensors=None)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error("model.name_or_path", name_or_path, exc) from None
    return model.to(device)


def apply_lora(model, lora_cfg):
    """Wrap `model` with LoRA adapters (PEFT); the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    targets = lora_cfg.target_modules or LORA_TARGETS.get(model.config.model_type, "all-linear")
    peft_cfg = LoraConfig(r=lora_cfg.rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                          target_modules=targets, task_type="CAUSAL_LM")
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
        with self.peft_model.disable_adapter():
            return self.forward(input_ids=input_ids, attention_mask=attention_mask).logits


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


def teacher_cache_bytes(num_sequences: int, seq_len: int, vocab_size: int) -> int:
    return num_sequences * seq_len * vocab_size * 2  # float16


class CachedTeacher:
    """Full fine-tuning: teacher log-probabilities over the whole forget set, computed once.

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
