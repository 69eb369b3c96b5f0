"""Model families: LoRA's default targets and FSDP2's per-block wrap for GPT-2, GPT-Neo, GPT-J,
Llama, Mistral, Qwen2, Gemma, Phi-3 and OPT (tiny random-weight models built here), the
one-line refusals for a family with neither, and the cached teacher with LoRA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import micro_config
from trainables.config import LoraConfig, ScalingConfig, UnlearnConfig, from_dict
from trainables.errors import InputError
from trainables.fsdp import transformer_blocks
from trainables.methods import UnDIAL
from trainables.models import AdapterOffTeacher, apply_lora, default_lora_targets, load_causal_lm

V = 320  # the micro tokenizer's vocabulary size (conftest)


def _family_config(model_type: str, vocab: int = V, token_id: int = 0):
    """A tiny config of each family (~30-45k parameters, 2 layers, hidden 32)."""
    import transformers as T

    ids = {"bos_token_id": token_id, "eos_token_id": token_id, "pad_token_id": token_id}
    llama_like = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **ids)
    build = {
        "gpt2": lambda: T.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64, **ids),
        "gpt_neo": lambda: T.GPTNeoConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=2,
                                          attention_types=[[["global"], 2]], intermediate_size=64,
                                          max_position_embeddings=64, **ids),
        "gptj": lambda: T.GPTJConfig(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, rotary_dim=8,
                                     n_positions=64, **ids),
        "llama": lambda: T.LlamaConfig(**llama_like),
        "mistral": lambda: T.MistralConfig(**llama_like),
        "qwen2": lambda: T.Qwen2Config(**llama_like),
        "gemma": lambda: T.GemmaConfig(head_dim=8, **llama_like),
        "phi3": lambda: T.Phi3Config(**llama_like),
        "opt": lambda: T.OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                   num_attention_heads=2, max_position_embeddings=64, word_embed_proj_dim=32,
                                   **ids),
    }
    return build[model_type]()


FAMILIES = ("gpt2", "gpt_neo", "gptj", "llama", "mistral", "qwen2", "gemma", "phi3", "opt")


def _save_family(model_type: str, folder, vocab: int = V, token_id: int = 0, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_family_config(model_type, vocab, token_id))
    assert model.config.model_type == model_type
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (2, 12), generator=g)
    return ids, torch.ones_like(ids), ids.clone()


def _module_names(model) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}


@pytest.mark.parametrize("model_type", FAMILIES)
def test_lora_undial_step_and_adapter_roundtrip(model_type, tmp_path):
    from peft import PeftModel

    model_dir = _save_family(model_type, tmp_path / "model")
    assert (model_dir / "model.safetensors").is_file()
    base = load_causal_lm(str(model_dir))
    targets = default_lora_targets(model_type)
    assert targets, model_type
    missing = set(targets) - _module_names(base)
    assert not missing, f"{model_type}: default targets not in the model: {missing}"

    model = apply_lora(base, LoraConfig(enabled=True, rank=4, alpha=8.0))
    adapted = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if hasattr(m, "lora_A")}
    assert adapted == set(targets), model_type  # every default target got an adapter, nothing else
    lora_b = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_B" in k}
    assert lora_b and all(v.abs().max() == 0 for v in lora_b.values())  # PEFT's init: a no-op adapter

    ids, mask, labels = _batch()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    teacher_logits = AdapterOffTeacher(model)(ids, mask)
    logits = model(input_ids=ids, attention_mask=mask).logits
    loss = UnDIAL(gamma=5.0).loss(logits, teacher_logits, labels, None)
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    optimizer.step()
    changed = {k: float((dict(model.named_parameters())[k] - v).abs().max()) for k, v in lora_b.items()}
    assert min(changed.values()) > 0, changed

    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids, attention_mask=mask).logits
        with model.disable_adapter():
            untouched = model(input_ids=ids, attention_mask=mask).logits
    assert (trained - untouched).abs().max() > 1e-4  # the adapter does something to compare
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    reloaded = PeftModel.from_pretrained(load_causal_lm(str(model_dir)), tmp_path / "adapter").eval()
    with torch.no_grad():
        again = reloaded(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(again, trained, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_fsdp_blocks_are_the_decoder_layers(model_type):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(_family_config(model_type))
    blocks = transformer_blocks(model)
    assert len(blocks) == 2  # num layers
    assert {type(b).__name__ for b in blocks} <= set(model._no_split_modules)
    # Through PEFT too (the LoRA run shards the PeftModel)
    peft_blocks = transformer_blocks(apply_lora(model, LoraConfig(enabled=True, rank=2)))
    assert [id(b) for b in peft_blocks] == [id(b) for b in blocks]


def test_unknown_family_refused_with_the_key_to_set():
    from transformers import BloomConfig, BloomForCausalLM

    assert default_lora_targets("bloom") is None and default_lora_targets(None) is None
    assert "qkv_proj" in default_lora_targets("phi3") and "gate_up_proj" in default_lora_targets("phi3")
    default_lora_targets("llama").append("mutated")  # a copy: the table stays as it is
    assert "mutated" not in default_lora_targets("llama")

    model = BloomForCausalLM(BloomConfig(vocab_size=V, hidden_size=32, n_layer=2, n_head=2))
    with pytest.raises(InputError) as err:
        apply_lora(model, LoraConfig(enabled=True, rank=2))
    assert str(err.value) == ("lora.target_modules: no default LoRA targets for model family 'bloom'; "
                              "set lora.target_modules (e.g. [q_proj, v_proj])")
    peft_model = apply_lora(model, LoraConfig(enabled=True, rank=2, target_modules=["query_key_value"]))
    assert sum("lora_A" in k for k, _ in peft_model.named_parameters()) == 2


def test_fsdp_without_blocks_refused_and_block_class_setting():
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(_family_config("llama"))
    model._no_split_modules = None  # as a custom model that declares none
    with pytest.raises(InputError) as err:
        transformer_blocks(model)
    message = str(err.value)
    assert message.startswith("scaling.fsdp_block_class: model family 'llama'") and "\n" not in message
    assert len(transformer_blocks(model, "LlamaDecoderLayer")) == 2
    assert len(transformer_blocks(model, "LlamaMLP")) == 2
    with pytest.raises(InputError, match="scaling.fsdp_block_class: no module of class 'NoSuchLayer'"):
        transformer_blocks(model, "NoSuchLayer")
    # nested listed classes: only the outermost are sharded
    model._no_split_modules = ["LlamaDecoderLayer", "LlamaMLP"]
    assert {type(b).__name__ for b in transformer_blocks(model)} == {"LlamaDecoderLayer"}

    cfg = from_dict(UnlearnConfig, {"scaling": {"strategy": "fsdp", "fsdp_block_class": "LlamaDecoderLayer"}})
    assert cfg.scaling.fsdp_block_class == "LlamaDecoderLayer"
    with pytest.raises(InputError, match="scaling.fsdp_block_class: expected a class name"):
        ScalingConfig(fsdp_block_class="not a class").validate("scaling")


# --------------------------------------------------------------------------------------------
# The cached teacher with LoRA


def test_cached_teacher_with_lora_matches_the_adapters_off_teacher(micro_assets, monkeypatch):
    from trainables.distributed import WorkerContext
    from trainables.train_loop import run_unlearning

    def run(teacher: str) -> tuple[dict, list[str]]:
        lines: list[str] = []
        cfg = from_dict(UnlearnConfig, micro_config(micro_assets, lora={"enabled": True, "rank": 4},
                                                    method={"teacher": teacher},
                                                    train={"max_steps": 2, "select": "last"}))
        return run_unlearning(cfg, WorkerContext.setup(False), None, log=lines.append), lines

    live, live_log = run("live")
    assert "teacher: adapters-off" in live_log

    def no_forward(*args, **kwargs):
        raise AssertionError("an adapters-off teacher pass with method.teacher=cached")

    monkeypatch.setattr(AdapterOffTeacher, "__call__", no_forward)
    cached, cached_log = run("cached")
    assert "teacher: cached" in cached_log
    assert any(line.startswith("teacher cache:") for line in cached_log)
    first_live, first_cached = live["curve"][0]["loss"], cached["curve"][0]["loss"]
    assert first_live > 0
    assert first_cached == pytest.approx(first_live, rel=1e-3)  # the cache is float16
    assert cached["curve"][1]["loss"] == pytest.approx(live["curve"][1]["loss"], rel=1e-3)


# --------------------------------------------------------------------------------------------
# FSDP2, 2 CPU workers under torchrun, for two families other than the micro GPT-Neo


@pytest.mark.slow
@pytest.mark.parametrize("model_type,mode", [("llama", "full"), ("qwen2", "lora")])
def test_fsdp_two_workers_torchrun(model_type, mode, micro_assets, tmp_path):
    from transformers import AutoTokenizer

    from trainables.evaluate import load_result_model

    tokenizer = AutoTokenizer.from_pretrained(micro_assets / "model")
    model_dir = _save_family(model_type, tmp_path / model_type, vocab=len(tokenizer),
                             token_id=tokenizer.eos_token_id)
    tokenizer.save_pretrained(model_dir)  # one folder: the family's weights + the micro tokenizer
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(micro_config(
        micro_assets, model={"name_or_path": str(model_dir)}, lora={"enabled": mode == "lora", "rank": 4},
        train={"max_steps": 2, "select": "last", "eval_every": 2})))
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "trainables.train_loop", str(config), str(out),
                           "scaling.strategy=fsdp", "scaling.num_workers=2"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "train_result.json").read_text())
    assert result["steps"] == 2 and all(torch.isfinite(torch.tensor(c["loss"])) for c in result["curve"])
    assert (out / ("adapter_config.json" if mode == "lora" else "config.json")).is_file()

    ids = tokenizer(["Ada Lee0f lives on the street; call +44 1234 567890."], return_tensors="pt").input_ids
    with torch.no_grad():
        trained = load_result_model(str(out))(ids).logits
        initial = load_causal_lm(str(model_dir))(ids).logits
    assert trained.shape == initial.shape and torch.isfinite(trained).all()
    assert (trained - initial).abs().max() > 1e-3  # the saved model is the trained one
