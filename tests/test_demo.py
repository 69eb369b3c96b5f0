"""The built-in offline demo (trainables/demo.py), built once in its tiny size."""

import json
import os
import re

import pytest
import torch

from trainables import demo
from trainables import metrics as M
from trainables.errors import InputError

SPLITS = ("forget", "unseen", "retain", "heldout", "prompts")


@pytest.fixture(scope="module")
def tiny(tiny_demo_build):
    """(path, log lines) of the session's tiny demo (tests/conftest.py builds it once)."""
    return tiny_demo_build


def _jsonl(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def test_layout_and_manifest(tiny):
    path, lines = tiny
    for name in SPLITS:
        assert (path / "data" / f"{name}.jsonl").is_file()
    for sub in ("tokenizer", "model", "reference"):
        assert (path / sub / "tokenizer.json").is_file()
    for sub in ("model", "reference"):
        assert (path / sub / "config.json").is_file()
        assert (path / sub / "model.safetensors").is_file()
    m = json.loads((path / "manifest.json").read_text())
    assert m["seed"] == 0 and m["size"] == "tiny" and m["max_length"] == 64
    assert m["build_seconds"] > 0 and m["n_params"] > 0
    for tag in ("model", "reference"):
        assert {"forget_ma", "unseen_ma", "heldout_ppl"} <= set(m["figures"][tag])
        assert any(k.startswith("forget_el3") for k in m["figures"][tag])
    for name in SPLITS + ("tokenizer", "model", "reference"):
        assert (path / m["files"][name]).exists()
    assert m["counts"]["forget"] == 16 and m["counts"]["unseen"] == 32
    assert any("step" in line and "loss" in line for line in lines)
    # nothing left beside the demo but the lock file
    assert not [p for p in path.parent.iterdir() if ".build-" in p.name or ".old-" in p.name]


def test_records_and_spans(tiny):
    path, _ = tiny
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path / "tokenizer")
    assert tok.is_fast and tok.eos_token is not None and tok.pad_token is not None
    for name in ("forget", "unseen", "heldout"):
        records = _jsonl(path / "data" / f"{name}.jsonl")
        for r in records:
            text, spans = r["text"], r["spans"]
            kinds = {k for _, _, k in spans}
            assert kinds == set(demo.FIELDS)
            for s, e, kind in spans:
                assert 0 <= s < e <= len(text)
                value = text[s:e]
                assert value == value.strip()
                if kind == "email":
                    assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", value)
                elif kind == "iban":
                    assert re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]+", value)
                elif kind == "dob":
                    assert re.search(r"\b(19|20)\d\d$", value)
                elif kind == "phone":
                    assert sum(c.isdigit() for c in value) >= 10
            names = {text[s:e] for s, e, k in spans if k == "name"}
            assert len(names) == 1  # a name said twice is the same name
    retain = _jsonl(path / "data" / "retain.jsonl")
    prose = [r for r in retain if not r["spans"]]
    assert prose and len(prose) < len(retain)
    assert all(not r["spans"] for r in _jsonl(path / "data" / "prompts.jsonl"))
    # every line fits the demo's max_length without special tokens
    for name in SPLITS:
        texts = [r["text"] for r in _jsonl(path / "data" / f"{name}.jsonl")]
        lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
        assert max(lengths) <= 64
    # offsets map spans to tokens
    r = _jsonl(path / "data" / "forget.jsonl")[0]
    enc = tok(r["text"], return_offsets_mapping=True, add_special_tokens=False)
    s, e, _ = next(sp for sp in r["spans"] if sp[2] == "email")
    inside = [t for t, (a, b) in enumerate(enc["offset_mapping"]) if a < e and s < b]
    assert "@" in tok.decode([enc["input_ids"][t] for t in inside])


def test_splits_are_disjoint(tiny):
    path, _ = tiny
    texts = {n: {r["text"] for r in _jsonl(path / "data" / f"{n}.jsonl")} for n in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not texts[a] & texts[b], (a, b)
    names = {n: {r["text"][s:e] for r in _jsonl(path / "data" / f"{n}.jsonl")
                 for s, e, k in r["spans"] if k == "name"} for n in ("forget", "unseen", "retain")}
    assert not names["forget"] & names["retain"] and not names["unseen"] & names["retain"]


def _batch(tok, records):
    """ids, mask (right padded, no special tokens) and the private-field token mask of records."""
    from trainables.subsets import char_spans_to_token_mask

    enc = tok([r["text"] for r in records], add_special_tokens=False, padding=True, return_tensors="pt",
              return_offsets_mapping=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    field = char_spans_to_token_mask(enc["offset_mapping"], mask, [[sp[:2] for sp in r["spans"]] for r in records])
    return ids, mask, field


def test_forget_records_are_memorised(tiny):
    path, _ = tiny
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = json.loads((path / "manifest.json").read_text())
    figs, stride = m["figures"], m["el_stride"]
    assert figs["model"]["forget_ma"] > figs["model"]["unseen_ma"] + 0.2
    assert figs["reference"]["forget_ma"] < figs["model"]["forget_ma"] - 0.2
    assert figs["model"]["forget_field_ma"] > figs["model"]["unseen_field_ma"] + 0.2
    # the saved model reproduces the manifest (trainables.metrics on a fresh right-padded batch)
    tok = AutoTokenizer.from_pretrained(path / "model")
    model = AutoModelForCausalLM.from_pretrained(path / "model").eval()
    for name in ("forget", "unseen"):
        ids, mask, field = _batch(tok, _jsonl(path / "data" / f"{name}.jsonl"))
        assert M.memorization_accuracy(model, ids, mask) == pytest.approx(figs["model"][f"{name}_ma"], abs=2e-3)
        assert M.memorization_accuracy(model, ids, mask, position_mask=field) == pytest.approx(
            figs["model"][f"{name}_field_ma"], abs=2e-3)
    ids, mask, _ = _batch(tok, _jsonl(path / "data" / "forget.jsonl"))
    assert M.extraction_likelihood(model, ids, 3, mask, prefix_stride=stride) == pytest.approx(
        figs["model"][f"forget_el3_stride{stride}"], abs=2e-3)
    ids, mask, _ = _batch(tok, _jsonl(path / "data" / "heldout.jsonl"))
    assert M.perplexity(model, ids, mask) == pytest.approx(figs["model"]["heldout_ppl"], rel=1e-3)


def test_data_generation_is_deterministic():
    a, tok_a = demo.make_demo_data(seed=0, size="tiny")
    b, tok_b = demo.make_demo_data(seed=0, size="tiny")
    assert a == b
    assert tok_a.get_vocab() == tok_b.get_vocab()
    c, _ = demo.make_demo_data(seed=1, size="tiny")
    assert c["forget"] != a["forget"]


def test_forget_jsonl_matches_generator(tiny):
    path, _ = tiny
    splits, _ = demo.make_demo_data(seed=0, size="tiny")
    assert _jsonl(path / "data" / "forget.jsonl") == splits["forget"]


def test_second_call_is_cached(tiny, monkeypatch):
    path, _ = tiny
    before = (path / "manifest.json").stat().st_mtime_ns
    monkeypatch.setattr(demo, "_build_into", _boom)
    lines = []
    assert demo.build_demo(path, seed=0, size="tiny", log=lines.append) == path
    monkeypatch.setenv("UNDIAL_CACHE", str(path.parent))
    assert demo.default_demo_dir(0, "tiny") == path
    assert demo.ensure_demo(seed=0, size="tiny", log=lines.append) == path
    assert lines == []
    assert (path / "manifest.json").stat().st_mtime_ns == before


def _boom(*args, **kwargs):
    raise AssertionError("must not rebuild")


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "_train", _interrupt)
    out = tmp_path / "demo"
    with pytest.raises(KeyboardInterrupt):
        demo.build_demo(out, seed=0, size="tiny", log=lambda *a: None)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] in ([], [".demo.lock"])


def test_interrupted_forced_rebuild_keeps_the_old_demo(tiny, monkeypatch):
    path, _ = tiny
    before = (path / "manifest.json").read_text()
    monkeypatch.setattr(demo, "_train", _interrupt)
    with pytest.raises(KeyboardInterrupt):
        demo.build_demo(path, seed=0, size="tiny", force=True, log=lambda *a: None)
    assert (path / "manifest.json").read_text() == before
    assert (path / "model" / "model.safetensors").is_file()
    assert not [p for p in path.parent.iterdir() if ".build-" in p.name]


def test_bad_size_and_default_dir(monkeypatch, tmp_path):
    with pytest.raises(InputError):
        demo.build_demo(tmp_path / "x", size="huge")
    with pytest.raises(InputError):
        demo.default_demo_dir(size="huge")
    monkeypatch.delenv("UNDIAL_CACHE", raising=False)
    assert demo.default_demo_dir(3, "full") == (
        demo.Path(os.path.expanduser("~")) / ".cache" / "undial" / "demo-v2-full-seed3")
    monkeypatch.setenv("UNDIAL_CACHE", str(tmp_path))
    assert demo.default_demo_dir() == tmp_path / "demo-v2-full-seed0"


def _naive_el(model, ids, n, stride):
    """EL_n by the definition, one prefix at a time, with transformers' greedy generate."""
    T, overlaps = len(ids), []
    for i in range(stride, T - n + 1, stride):
        out = model.generate(torch.tensor([ids[:i]]), do_sample=False, max_new_tokens=T - i,
                             min_new_tokens=T - i, pad_token_id=0)
        gen, suffix = out[0, i:].tolist(), ids[i:]
        truth = {tuple(suffix[j:j + n]) for j in range(len(suffix) - n + 1)}
        hits = sum(tuple(gen[j:j + n]) in truth for j in range(len(gen) - n + 1))
        overlaps.append(hits / (len(suffix) - n + 1))
    return sum(overlaps) / len(overlaps)


def test_el_matches_the_definition(tiny):
    path, _ = tiny
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path / "model")
    model = AutoModelForCausalLM.from_pretrained(path / "model").eval()
    records = _jsonl(path / "data" / "forget.jsonl")[:1] + _jsonl(path / "data" / "unseen.jsonl")[:1]
    ids, mask, _ = _batch(tok, records)
    fast = M.extraction_likelihood_per_sequence(model, ids, 3, mask, prefix_stride=12)
    for k in range(len(records)):
        seq = ids[k, :int(mask[k].sum())].tolist()
        assert fast[k] == pytest.approx(_naive_el(model, seq, 3, 12), abs=1e-6)


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError):
        demo.build_demo(tmp_path, size="tiny", force=True, log=lambda *a: None)
    assert (tmp_path / "notes.txt").read_text() == "mine"
