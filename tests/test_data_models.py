import json

import numpy as np
import pytest
import torch

from trainables.config import DataConfig, LoraConfig
from trainables.data import load_datasets, load_split
from trainables.errors import InputError
from trainables.methods import UnDIAL
from trainables.models import (AdapterOffTeacher, CachedTeacher, FrozenCopyTeacher, apply_lora, load_causal_lm,
                               load_tokenizer, parameter_bytes)


@pytest.fixture(scope="module")
def tokenizer(micro_assets):
    return load_tokenizer(str(micro_assets / "model"))


def cfg(**kw):
    return DataConfig(**{"max_length": 48, "min_length": 4, **kw})


def test_jsonl_with_spans_is_fixed_length_with_masks(micro_assets, tokenizer):
    tset = load_split(str(micro_assets / "data/forget.jsonl"), tokenizer, cfg())
    assert tset.input_ids.shape == (8, 48) and tset.attention_mask.shape == (8, 48)
    assert tset.offsets.shape == (8, 48, 2)
    assert tset.spans is not None and tset.spans[0][0][2] == "name"
    real = tset.attention_mask.bool()
    assert (tset.labels[~real] == -100).all() and (tset.labels[real] == tset.input_ids[real]).all()


def test_text_csv_parquet_agree(micro_assets, tokenizer, tmp_path):
    texts = [json.loads(line)["text"] for line in (micro_assets / "data/forget.jsonl").read_text().splitlines()]
    (tmp_path / "f.txt").write_text("\n".join(texts) + "\n\n")
    import pandas as pd

    pd.DataFrame({"text": texts}).to_csv(tmp_path / "f.csv", index=False)
    pd.DataFrame({"text": texts}).to_parquet(tmp_path / "f.parquet")
    ref = load_split(str(micro_assets / "data/forget.jsonl"), tokenizer, cfg()).input_ids
    for name in ("f.txt", "f.csv", "f.parquet"):
        assert torch.equal(load_split(str(tmp_path / name), tokenizer, cfg()).input_ids, ref), name


def test_npy_token_arrays_get_exact_offsets(tokenizer, tmp_path):
    ids = tokenizer(["alice lives on bank street", "call the bank today please now"], padding="max_length",
                    max_length=6, truncation=True)["input_ids"]
    np.save(tmp_path / "x.npy", np.array(ids, dtype=np.int64))
    tset = load_split(str(tmp_path / "x.npy"), tokenizer, cfg(min_length=6))
    assert tset.input_ids.tolist() == ids
    for row in range(2):
        for col in range(6):
            s, e = tset.offsets[row, col].tolist()
            assert tset.texts[row][s:e] == tokenizer.convert_tokens_to_string(
                [tokenizer.convert_ids_to_tokens(ids[row][col])])


@pytest.mark.parametrize("case, message", [
    ("missing", "file not found"),
    ("empty", "empty data set"),
    ("badjson", "row 2: not valid JSON"),
    ("nofield", "row 1: no string field 'text'"),
    ("short", "row 1: 2 tokens, fewer than data.min_length=4"),
    ("oov", "row 2: token id 99999 at position 1 is outside the vocabulary"),
    ("npy1d", "expected a 2-D integer array"),
    ("badspans", "row 1: spans must be a list of [start, end, label]"),
    ("unknownsuffix", "cannot tell the data format"),
])
def test_bad_data_names_file_and_row(case, message, tokenizer, tmp_path):
    path = tmp_path / {"npy1d": "x.npy", "oov": "x.npy", "unknownsuffix": "x.data"}.get(case, "x.jsonl")
    if case == "empty":
        path.write_text("\n")
    elif case == "badjson":
        path.write_text('{"text": "fine and long enough text"}\n{oops\n')
    elif case == "nofield":
        path.write_text('{"body": "x"}\n')
    elif case == "short":
        path.write_text('{"text": "hi"}\n')
    elif case == "oov":
        np.save(path, np.array([[1, 2, 3, 4], [5, 99999, 6, 7]]))
    elif case == "npy1d":
        np.save(path, np.array([1, 2, 3]))
    elif case == "badspans":
        path.write_text('{"text": "some text here ok", "spans": [5]}\n')
    elif case == "unknownsuffix":
        path.write_text("x")
    with pytest.raises(InputError) as err:
        load_split(str(path), tokenizer, cfg())
    assert message in str(err.value) and str(path) in str(err.value)


def test_load_datasets_reads_every_set(micro_assets, tokenizer):
    root = micro_assets / "data"
    data = load_datasets(cfg(forget=str(root / "forget.jsonl"), unseen=str(root / "unseen.jsonl"),
                             retain=str(root / "retain.jsonl"), heldout=str(root / "heldout.jsonl"),
                             prompts=str(root / "prompts.jsonl")), tokenizer)
    assert len(data.forget) == 8 and len(data.unseen) == 8 and len(data.retain) == 24 and len(data.prompts) == 12


def test_missing_model_is_one_clear_line(tmp_path):
    with pytest.raises(InputError, match="model.name_or_path: cannot load"):
        load_causal_lm(str(tmp_path / "nothing-here"))


def test_lora_teacher_is_the_base_model_without_a_second_copy(micro_assets):
    base = load_causal_lm(str(micro_assets / "model"))
    base_bytes = parameter_bytes(base)
    ids = torch.randint(0, base.config.vocab_size, (2, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        base_logits = base(input_ids=ids, attention_mask=mask).logits.clone()
    model = apply_lora(base, LoraConfig(enabled=True, rank=4))
    adapter_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" in n)
    assert parameter_bytes(model) == base_bytes + adapter_bytes  # the base weights are shared, not copied
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    teacher = AdapterOffTeacher(model)
    assert torch.allclose(teacher(ids, mask), base_logits, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids, attention_mask=mask).logits, base_logits, atol=1e-3)


def test_cached_teacher_matches_live_teacher_and_respects_its_cap(micro_assets):
    model = load_causal_lm(str(micro_assets / "model"))
    ids = torch.randint(0, model.config.vocab_size, (3, 10))
    mask = torch.ones_like(ids)
    live = FrozenCopyTeacher.copy_of(model)
    cached = CachedTeacher.compute(model, ids, mask, max_gb=1.0, log=lambda *a: None)
    assert cached.logprobs.dtype == torch.float16
    student = model(input_ids=ids, attention_mask=mask).logits
    method = UnDIAL(gamma=10.0)
    idx = torch.tensor([2, 0])
    a = method.loss(student[idx], live(ids[idx], mask[idx]), ids[idx], None)
    b = method.loss(student[idx], cached(ids[idx], mask[idx], idx), ids[idx], None)
    assert torch.allclose(a, b, rtol=1e-3)
    with pytest.raises(InputError, match="teacher_cache_max_gb"):
        CachedTeacher.compute(model, ids, mask, max_gb=1e-9, log=lambda *a: None)


def test_a_tokenizer_saved_after_generation_reloads_right_padded(micro_assets, tmp_path):
    """Generation pads prompts on the left; a fast tokenizer remembers that in its backend and
    save_pretrained writes it to tokenizer.json, so a result folder used to reload with
    padding_side "left" and the next job's data came out left-padded (a sequential request's
    second model). Generation now leaves no padding state; load_tokenizer pins right padding
    for a folder saved that way elsewhere."""
    from transformers import AutoTokenizer

    from trainables.metrics import generate_continuations

    tok = load_tokenizer(str(micro_assets / "model"))
    model = load_causal_lm(str(micro_assets / "model"))
    generate_continuations(model, tok, ["alpha beta gamma", "alpha"], max_new_tokens=2, do_sample=False)
    assert tok.padding_side == "right"
    tok.save_pretrained(tmp_path / "after_generation")
    assert AutoTokenizer.from_pretrained(tmp_path / "after_generation").padding_side == "right"

    tok.padding_side = "left"  # what generation used to leave behind
    tok(["alpha beta", "alpha"], padding=True)
    tok.save_pretrained(tmp_path / "left")
    assert AutoTokenizer.from_pretrained(tmp_path / "left").padding_side == "left"  # the library's behaviour
    reloaded = load_tokenizer(str(tmp_path / "left"))
    enc = reloaded(["alpha beta gamma delta", "alpha"], max_length=8, truncation=True, padding="max_length",
                   return_tensors="pt")
    assert reloaded.padding_side == "right" and enc["attention_mask"][1].tolist()[0] == 1
