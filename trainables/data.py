"""Data: forget / retain / held-out / unseen sets from JSON Lines, text, Parquet,
CSV (through `datasets`), a Hub dataset, or the Training Data Extraction
Challenge's `.npy` token arrays; tokenised to a fixed length with masks.

Every problem with a file is an InputError naming the file (and row).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables.errors import InputError

SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".txt": "text", ".parquet": "parquet",
                  ".csv": "csv", ".npy": "npy"}


@dataclass
class TokenizedSet:
    """A fixed-length, right-padded set. offsets/texts are None for token-id data (.npy)."""
    name: str
    input_ids: torch.Tensor           # [N, T] long
    attention_mask: torch.Tensor      # [N, T] long
    offsets: torch.Tensor | None      # [N, T, 2] character offsets of each token
    texts: list[str] | None
    spans: list[list[tuple[int, int, str]]] | None  # private-field character spans per record
    rows: list[int] | None = None     # where each record is in its file (1-based line / row), for errors

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def labels(self) -> torch.Tensor:
        return self.input_ids.masked_fill(self.attention_mask == 0, -100)


def detect_format(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    if not Path(path).exists() and "/" in path and not path.startswith((".", "/")):
        return "hub"
    raise InputError(f"{path}: cannot tell the data format from the name; set data.format")


def _parse_spans(raw, path: str, row: int, text: str) -> list[tuple[int, int, str]]:
    if raw is None:
        return []
    try:
        spans = [(int(s[0]), int(s[1]), str(s[2]) if len(s) > 2 else "private") for s in raw]
    except (TypeError, ValueError, IndexError, KeyError):
        raise InputError(f"{path}: row {row}: spans must be a list of [start, end, label]") from None
    for start, end, _ in spans:
        if not 0 <= start < end <= len(text):  # evaluation (ma_private) and policy spans index the text
            raise InputError(f"{path}: row {row}: span [{start}, {end}] is not inside its text "
                             f"(0 <= start < end <= {len(text)})")
    return spans


@dataclass
class Records:
    """The text records of a file. spans[i] is None where record i has no spans field;
    rows[i] is its 1-based line (JSONL, text) or table row (Parquet, CSV, Hub)."""
    texts: list[str]
    spans: list[list[tuple[int, int, str]] | None]
    rows: list[int]

    @property
    def has_spans(self) -> bool:
        return any(s is not None for s in self.spans)


def read_records(path: str, fmt: str, text_field: str = "text", spans_field: str = "spans") -> Records:
    """Texts, spans and source rows from a text-like file or a Hub dataset; every problem is one
    line naming the file and the row."""
    if fmt != "hub" and not Path(path).is_file():
        raise InputError(f"{path}: file not found")
    texts: list[str] = []
    spans: list = []
    rows: list[int] = []
    try:
        if fmt == "jsonl":
            with open(path, encoding="utf-8") as handle:
                for row, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise InputError(f"{path}: row {row}: not valid JSON ({exc.msg})") from None
                    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                        raise InputError(f"{path}: row {row}: no string field '{text_field}'")
                    texts.append(record[text_field])
                    raw = record.get(spans_field)
                    spans.append(None if raw is None else _parse_spans(raw, path, row, texts[-1]))
                    rows.append(row)
        elif fmt == "text":
            with open(path, encoding="utf-8") as handle:
                for row, line in enumerate(handle, start=1):
                    if line.strip():
                        texts.append(line.rstrip("\n"))
                        spans.append(None)
                        rows.append(row)
        elif fmt in ("parquet", "csv", "hub"):
            import datasets

            try:
                if fmt == "hub":
                    name, _, split = path.partition(":")
                    table = datasets.load_dataset(name, split=split or "train")
                else:
                    table = datasets.load_dataset(fmt, data_files=path, split="train")
            except Exception as exc:  # datasets raises many types; all mean "cannot read this"
                raise InputError(f"{path}: cannot load as {fmt}: {str(exc).splitlines()[0]}") from None
            if text_field not in table.column_names:
                raise InputError(f"{path}: no column '{text_field}' (columns: {', '.join(table.column_names)})")
            texts = [str(t) for t in table[text_field]]
            rows = list(range(1, len(texts) + 1))
            if spans_field in table.column_names:
                spans = [None if s is None else _parse_spans(s, path, i + 1, texts[i])
                         for i, s in enumerate(table[spans_field])]
            else:
                spans = [None] * len(texts)
        else:
            raise InputError(f"{path}: format '{fmt}' holds token ids, not text")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not texts:
        raise InputError(f"{path}: empty data set")
    return Records(texts, spans, rows)


def read_text_records(path: str, fmt: str, text_field: str = "text", spans_field: str = "spans"
                      ) -> tuple[list[str], list[list[tuple[int, int, str]]] | None]:
    """Texts (and spans where the records carry them: [] for a record without) from a text-like
    file or a Hub dataset."""
    records = read_records(path, fmt, text_field, spans_field)
    return records.texts, ([s or [] for s in records.spans] if records.has_spans else None)


def tokenize_texts(name: str, texts: list[str], spans, tokenizer, max_length: int,
                   min_length: int = 1, rows: list[int] | None = None) -> TokenizedSet:
    enc = tokenizer(texts, max_length=max_length, truncation=True, padding="max_length",
                    return_offsets_mapping=True, return_tensors="pt")
    lengths = enc["attention_mask"].sum(1)
    short = (lengths < min_length).nonzero().flatten()
    if len(short):
        i = int(short[0])
        raise InputError(f"{name}: row {rows[i] if rows else i + 1}: {int(lengths[i])} tokens, fewer than "
                         f"data.min_length={min_length}")
    return TokenizedSet(name, enc["input_ids"], enc["attention_mask"], enc["offset_mapping"], texts, spans,
                        rows)


def load_token_array(path: str, vocab_size: int, max_length: int, min_length: int = 1,
                     tokenizer=None) -> TokenizedSet:
    """Training Data Extraction Challenge format: an [N, L] integer array of token ids."""
    if not Path(path).is_file():
        raise InputError(f"{path}: file not found")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a NumPy array file ({str(exc).splitlines()[0]})") from None
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{path}: expected a 2-D integer array of token ids, got {array.dtype} {array.shape}")
    if array.shape[0] == 0:
        raise InputError(f"{path}: empty data set")
    if array.shape[1] < min_length:
        raise InputError(f"{path}: row 1: {array.shape[1]} tokens, fewer than data.min_length={min_length}")
    bad = np.argwhere((array < 0) | (array >= vocab_size))
    if len(bad):
        row, col = bad[0]
        raise InputError(f"{path}: row {row + 1}: token id {int(array[row, col])} at position {col} is outside "
                         f"the vocabulary (size {vocab_size})")
    ids = torch.from_numpy(array[:, :max_length].astype(np.int64))
    texts, offsets = (None, None) if tokenizer is None else texts_with_offsets(ids, tokenizer)
    return TokenizedSet(path, ids, torch.ones_like(ids), offsets, texts, None)


def texts_with_offsets(ids: torch.Tensor, tokenizer) -> tuple[list[str], torch.Tensor]:
    """Text for token-id data, built token by token so every token's character offsets are
    exact in it (text-based subset policies then work on .npy data too)."""
    offsets = torch.zeros(*ids.shape, 2, dtype=torch.long)
    texts = []
    for row, seq in enumerate(ids.tolist()):
        parts, pos = [], 0
        for col, token in enumerate(tokenizer.convert_ids_to_tokens(seq)):
            piece = tokenizer.convert_tokens_to_string([token])
            offsets[row, col, 0], offsets[row, col, 1] = pos, pos + len(piece)
            parts.append(piece)
            pos += len(piece)
        texts.append("".join(parts))
    return texts, offsets


def load_split(path: str, tokenizer, data_cfg, min_length: int | None = None,
               max_records: int | None = None) -> TokenizedSet:
    """One data set, tokenised to data.max_length (right padding, masks)."""
    fmt = detect_format(path, data_cfg.format)
    min_len = data_cfg.min_length if min_length is None else min_length
    if fmt == "npy":
        tset = load_token_array(path, len(tokenizer), data_cfg.max_length, min_len, tokenizer)
    else:
        records = read_records(path, fmt, data_cfg.text_field, data_cfg.spans_field)
        texts, rows = records.texts[:max_records], records.rows[:max_records]
        spans = [s or [] for s in records.spans[:max_records]] if records.has_spans else None
        tset = tokenize_texts(path, texts, spans, tokenizer, data_cfg.max_length, min_len, rows)
    if max_records is not None and len(tset) > max_records:
        tset = TokenizedSet(tset.name, tset.input_ids[:max_records], tset.attention_mask[:max_records],
                            None if tset.offsets is None else tset.offsets[:max_records],
                            None if tset.texts is None else tset.texts[:max_records],
                            None if tset.spans is None else tset.spans[:max_records],
                            None if tset.rows is None else tset.rows[:max_records])
    return tset


@dataclass
class DataSets:
    forget: TokenizedSet
    retain: TokenizedSet | None
    heldout: TokenizedSet | None
    unseen: TokenizedSet | None
    prompts: list[str] | None


def load_datasets(data_cfg, tokenizer, need_retain: bool = True) -> DataSets:
    """All sets named in the config. forget/unseen must meet data.min_length; the others
    (ordinary text for perplexity and prompts) only need two tokens."""
    def opt(path, **kw):
        return None if path is None else load_split(path, tokenizer, data_cfg, **kw)

    forget = load_split(data_cfg.forget, tokenizer, data_cfg)
    unseen = opt(data_cfg.unseen)
    retain = opt(data_cfg.retain, min_length=2, max_records=None) if need_retain else None
    heldout = opt(data_cfg.heldout, min_length=2, max_records=data_cfg.max_records)
    prompts = None
    if data_cfg.prompts is not None:
        fmt = detect_format(data_cfg.prompts, data_cfg.format)
        prompts, _ = read_text_records(data_cfg.prompts, fmt, data_cfg.text_field, data_cfg.spans_field)
    return DataSets(forget, retain, heldout, unseen, prompts)
