"""`undial plan`: the memory arithmetic against tensors measured on CPU (tiny GPT-Neo models),
the activation formula's arithmetic, the sharding division, and the command line."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.plan import (SHAPES, RunShape, activation_bytes, estimate, plan, resolve_shape,
                               shape_from_config_json)

REPO = Path(__file__).resolve().parents[1]


def _tiny_shape(hidden=64, layers=2, heads=2, vocab=320):
    from trainables.tiny import gpt_neo_config

    config = gpt_neo_config(vocab, hidden=hidden, layers=layers, heads=heads, context=64)
    return config, shape_from_config_json(config.to_dict(), "tiny")


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _measure(dtype: str, lora_rank: int | None):
    """One AdamW step on a tiny GPT-Neo; bytes of params, grads, optimizer state, teacher copy."""
    import torch

    from trainables.config import LoraConfig
    from trainables.models import apply_lora
    from trainables.tiny import random_model

    config, shape = _tiny_shape()
    model = random_model(config, seed=0)
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    teacher_bytes = 0
    if lora_rank is None:
        teacher_bytes = _nbytes(copy.deepcopy(model).parameters())  # FrozenCopyTeacher's copy
    else:
        model = apply_lora(model, LoraConfig(enabled=True, rank=lora_rank, alpha=8.0))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    ids = torch.randint(0, config.vocab_size, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    state = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    return shape, {"weights": _nbytes(model.parameters()),
                   "gradients": _nbytes(p.grad for p in trainable if p.grad is not None),
                   "optimizer (AdamW)": _nbytes(state), "teacher": teacher_bytes}


def test_parameter_counts_match_the_models():
    import torch  # noqa: F401

    from trainables.config import LoraConfig
    from trainables.models import LORA_TARGETS, apply_lora, count_parameters
    from trainables.tiny import random_model

    config, shape = _tiny_shape(hidden=48, layers=3, heads=4)
    model = random_model(config)
    assert shape.params() == count_parameters(model)[0]
    # the planner's default LoRA targets are the project's: every projection of the block
    assert {name for name, *_ in shape.linears()} == set(LORA_TARGETS["gpt_neo"])
    peft = apply_lora(model, LoraConfig(enabled=True, rank=4))
    assert shape.lora_params(4) == count_parameters(peft)[1]
    assert shape.lora_params(4, ["q_proj", "v_proj"]) == 3 * 2 * 4 * (48 + 48)
    # the published sizes of the named shapes
    assert SHAPES["gpt-neo-125m"].params() == 125_198_592
    assert SHAPES["gpt-neo-1.3b"].params() == 1_315_575_808
    assert SHAPES["gpt-neo-2.7b"].params() == 2_651_307_520
    assert SHAPES["llama-7b"].params() == 6_738_415_616


@pytest.mark.parametrize("dtype,lora_rank", [("fp32", None), ("bf16", None), ("fp32", 4), ("bf16", 4)])
def test_estimate_matches_measured_bytes(dtype, lora_rank):
    shape, measured = _measure(dtype, lora_rank)
    run = RunShape(dtype=dtype, lora_rank=lora_rank, teacher="live", micro_batch=2, length=16)
    rows = estimate(shape, run, "none", 1).rows
    for name, value in measured.items():
        if value == 0:
            assert rows[name] == 0, name
        else:
            assert rows[name] == pytest.approx(value, rel=0.10), (name, rows[name], value)


def test_sharding_divides_by_the_worker_count():
    shape = SHAPES["gpt-neo-1.3b"]
    run = RunShape(dtype="fp32", lora_rank=None, teacher="live", micro_batch=4, length=200)
    one = estimate(shape, run, "none", 1).rows
    fsdp = estimate(shape, run, "fsdp", 4).rows
    z2 = estimate(shape, run, "zero2", 4).rows
    ddp = estimate(shape, run, "ddp", 4).rows
    p = shape.params()
    assert one["weights"] == 4 * p and one["gradients"] == 4 * p and one["optimizer (AdamW)"] == 8 * p
    assert one["teacher"] == 4 * p
    for key in ("weights", "gradients", "optimizer (AdamW)", "teacher"):
        assert fsdp[key] == one[key] // 4
        assert ddp[key] == one[key]
    assert z2["weights"] == one["weights"] and z2["teacher"] == one["teacher"]
    assert z2["gradients"] == one["gradients"] // 4 and z2["optimizer (AdamW)"] == one["optimizer (AdamW)"] // 4
    assert ddp["comm buffers"] == 4 * p            # DDP's gradient buckets
    # DeepSpeed with bf16: fp32 master + moments, 12 bytes per trainable parameter, sharded
    z3 = estimate(shape, RunShape(dtype="bf16", teacher="live", micro_batch=4, length=200), "zero3", 8).rows
    assert z3["optimizer (AdamW)"] == 12 * p // 8 and z3["weights"] == 2 * p // 8
    # LoRA live teacher: adapters off, no copy
    lora = RunShape(dtype="bf16", lora_rank=8, teacher="live", micro_batch=4, length=200)
    assert estimate(shape, lora, "ddp", 4).rows["teacher"] == 0


def test_cached_teacher_bytes():
    from trainables.models import teacher_cache_bytes

    shape = SHAPES["gpt-neo-1.3b"]
    run = RunShape(dtype="bf16", lora_rank=8, teacher="cached", micro_batch=4, length=200, forget_records=32)
    est = estimate(shape, run, "fsdp", 4)
    assert est.host_cache == teacher_cache_bytes(32, 200, 50257) == 32 * 200 * 50257 * 2
    assert est.rows["teacher"] == 4 * 200 * 50257 * 2      # one micro-batch's slice on the GPU


def test_sequential_forget_sets_are_planned_for_the_largest(tmp_path):
    from orchestrator.plan import count_records

    files = []
    for i, n in enumerate((3, 5, 2)):
        f = tmp_path / f"forget{i}.jsonl"
        f.write_text("".join(f'{{"text": "record {j}"}}\n' for j in range(n)))
        files.append(str(f))
    assert count_records(files) == 5                   # each request is its own job
    assert count_records(files + [str(tmp_path / "missing.jsonl")]) is None


def test_activation_formula_arithmetic():
    neo = SHAPES["gpt-neo-1.3b"]
    m, t, h, a, v, layers = 4, 200, 2048, 16, 50257, 24
    per_layer = t * m * (34 * h + 5 * a * t)                    # I = 4h: Korthikanti's 34*s*b*h + 5*a*s^2*b
    assert activation_bytes(neo, m, t, 2) == layers * per_layer + m * t * v * (2 * 2 + 4)
    assert activation_bytes(neo, m, t, 4) == 2 * layers * per_layer + m * t * v * (2 * 4 + 4)
    llama = SHAPES["llama-7b"]
    gated = 200 * 1 * (17 * 4096 + 8 * 11008 + 5 * 32 * 200)
    assert activation_bytes(llama, 1, 200, 2) == 32 * gated + 200 * 32000 * 8
    # linear in the micro-batch
    assert activation_bytes(neo, 8, t, 2) == 2 * activation_bytes(neo, 4, t, 2)
    # a retain forward: the blocks, and only the student's logits
    assert activation_bytes(neo, m, t, 2, teacher_logits=False) == layers * per_layer + m * t * v * (2 + 4)


def test_a_retain_term_adds_its_forward_at_its_micro_batch():
    from trainables.config import UnlearnConfig, from_dict

    from orchestrator.plan import run_shape

    neo = SHAPES["gpt-neo-1.3b"]
    base = {"model": {"name_or_path": "EleutherAI/gpt-neo-1.3B", "dtype": "bf16"},
            "train": {"lr": 1e-4, "max_steps": 10, "batch_size": 8, "micro_batch_size": 2}}
    without = run_shape(from_dict(UnlearnConfig, base))
    assert without.retain_ratio == 0.0 and "retain activations" not in estimate(neo, without, "none", 1).rows
    plain = {**base, "method": {"retain_weight": 1.0}, "train": {**base["train"], "retain_batch_size": 16}}
    run = run_shape(from_dict(UnlearnConfig, plain))
    assert run.retain_ratio == 2.0
    rows = estimate(neo, run, "none", 1).rows
    assert rows["retain activations"] == activation_bytes(neo, 4, 64, 2, teacher_logits=False)  # m_r = 2 x 2
    assert estimate(neo, run, "none", 1).need > estimate(neo, without, "none", 1).need


def test_plan_is_light():
    code = "import sys, orchestrator.plan; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_shape_resolution_refusals(tmp_path, monkeypatch):
    from trainables.errors import InputError

    monkeypatch.setenv("UNDIAL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError, match="not built"):
        resolve_shape("demo:model")
    with pytest.raises(InputError, match="not in the Hugging Face cache"):
        resolve_shape("some-org/not-a-cached-model")
    assert resolve_shape("EleutherAI/gpt-neo-2.7B").params() == 2_651_307_520
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    with pytest.raises(InputError, match="not in the planner's table"):
        resolve_shape(str(folder))


def test_cli_refuses_a_bad_file_in_one_line(tmp_path, capsys):
    from orchestrator.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    for path in (bad, tmp_path / "missing.yaml"):
        assert main(["plan", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and str(path) in err and "\n" not in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {name_or_path: some-org/not-cached}\n")
    assert main(["plan", str(cfg)]) == 2
    assert "model.name_or_path" in capsys.readouterr().err


def test_cli_prints_the_table_for_the_shipped_config(capsys):
    from orchestrator.cli import main

    assert main(["plan", str(REPO / "configs" / "gpt-neo-1.3b-lora.yaml"), "--gpus-per-node", "8",
                 "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert "1.32B parameters" in out and "LoRA r=8" in out and "bf16" in out
    for row in ("weights", "gradients", "optimizer (AdamW)", "teacher", "activations", "need", "fits"):
        assert row in out
    assert "fsdp x4" in out and "recommended: " in out


def test_space_gives_one_table_per_memory_combination():
    text = plan(str(REPO / "search_spaces" / "gpt-neo-1.3b-lora.yaml"))
    titles = [line for line in text.splitlines() if line.startswith("== ")]
    assert [t.split("[")[1] for t in titles] == [f"lora.rank={r}]" for r in (4, 8, 16, 32)]


def test_full_7b_needs_sharding():
    text = plan(str(REPO / "configs" / "gpt-neo-1.3b-lora.yaml"), ["lora.enabled=false"], shape_name="llama-7b")
    assert "recommended: fsdp x" in text
