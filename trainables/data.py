"""Data: forget / retain / held-out / unseen sets from JSON Lines, text, Parquet,
CSV (through `datasets`), a Hub dataset, or the Training Data Extraction
Challenge's `.npy` token arrays; tokenised to a fixed length with masks.

A file of Q&A records (rows carrying `data.question_field` and `data.answer_field`) becomes
one sequence per record, question + `data.qa_separator` + answer, with `answer_mask` marking the
answer's tokens: the labels of the others are -100, so every loss and measure sees the answer only.

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
    answer_mask: torch.Tensor | None = None  # [N, T] bool, Q&A sets only: the answer's tokens

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def labels(self) -> torch.Tensor:
        """input_ids with -100 at padding and, in a Q&A set, at every question token."""
        ignored = self.attention_mask == 0
        if self.answer_mask is not None:
            ignored = ignored | ~self.answer_mask
        return self.input_ids.masked_fill(ignored, -100)

    def subset(self, idx: list[int]) -> "TokenizedSet":
        def pick(values):
            return None if values is None else (values[idx] if isinstance(values, torch.Tensor)
                                                else [values[i] for i in idx])

        return TokenizedSet(self.name, self.input_ids[idx], self.attention_mask[idx], pick(self.offsets),
                            pick(self.texts), pick(self.spans), pick(self.rows), pick(self.answer_mask))


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
    rows[i] is its 1-based line (JSONL, text) or table row (Parquet, CSV, Hub). A Q&A file's
    texts are question + separator + answer, and qa[i] = (len(question), where the answer starts)."""
    texts: list[str]
    spans: list[list[tuple[int, int, str]] | None]
    rows: list[int]
    qa: list[tuple[int, int]] | None = None

    @property
    def has_spans(self) -> bool:
        return any(s is not None for s in self.spans)


@dataclass(frozen=True)
class QAFields:
    question: str = "question"
    answer: str = "answer"
    separator: str = " "

    @classmethod
    def of(cls, data_cfg) -> "QAFields":
        return cls(data_cfg.question_field, data_cfg.answer_field, data_cfg.qa_separator)


def _qa_pair(path: str, row: int, question, answer, qa: QAFields) -> tuple[str, tuple[int, int]]:
    """The joined text of one Q&A record and (question end, answer start) in it."""
    for name, value in ((qa.question, question), (qa.answer, answer)):
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{path}: row {row}: '{name}' must be a non-empty string, got {value!r}")
    return question + qa.separator + answer, (len(question), len(question) + len(qa.separator))


def _kind_error(path: str, row: int, is_qa: bool, first_row: int, qa: QAFields, text_field: str) -> InputError:
    this, first = ((f"a Q&A record ('{qa.question}', '{qa.answer}')", f"a '{text_field}' record") if is_qa else
                   (f"a '{text_field}' record", f"a Q&A record ('{qa.question}', '{qa.answer}')"))
    return InputError(f"{path}: row {row}: {this} in a file whose row {first_row} is {first} "
                      "(one kind per file)")


def read_records(path: str, fmt: str, text_field: str = "text", spans_field: str = "spans",
                 qa: QAFields | None = None) -> Records:
    """Texts, spans and source rows from a text-like file or a Hub dataset; every problem is one
    line naming the file and the row. A file whose rows carry qa's question and answer fields is
    a Q&A file (every row then must)."""
    if fmt != "hub" and not Path(path).is_file():
        raise InputError(f"{path}: file not found")
    qa = qa or QAFields()
    texts: list[str] = []
    spans: list = []
    rows: list[int] = []
    qa_spans: list[tuple[int, int]] = []
    file_is_qa: bool | None = None
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
                    if not isinstance(record, dict):
                        raise InputError(f"{path}: row {row}: no string field '{text_field}'")
                    is_qa = qa.question in record or qa.answer in record
                    if file_is_qa is None:
                        file_is_qa, first_row = is_qa, row
                    elif is_qa != file_is_qa:
                        raise _kind_error(path, row, is_qa, first_row, qa, text_field)
                    if is_qa:
                        text, where = _qa_pair(path, row, record.get(qa.question), record.get(qa.answer), qa)
                        texts.append(text)
                        qa_spans.append(where)
                    elif not isinstance(record.get(text_field), str):
                        raise InputError(f"{path}: row {row}: no string field '{text_field}'")
                    else:
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
            if qa.question in table.column_names and qa.answer in table.column_names:
                file_is_qa = True
                for i, (q, a) in enumerate(zip(table[qa.question], table[qa.answer])):
                    text, where = _qa_pair(path, i + 1, q, a, qa)
                    texts.append(text)
                    qa_spans.append(where)
            elif text_field not in table.column_names:
                raise InputError(f"{path}: no column '{text_field}' (columns: {', '.join(table.column_names)})")
            else:
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
    return Records(texts, spans, rows, qa_spans if file_is_qa else None)


def read_text_records(path: str, fmt: str, text_field: str = "text", spans_field: str = "spans",
                      qa: QAFields | None = None) -> tuple[list[str], list[list[tuple[int, int, str]]] | None]:
    """Texts (and spans where the records carry them: [] for a record without) from a text-like
    file or a Hub dataset."""
    records = read_records(path, fmt, text_field, spans_field, qa)
    return records.texts, ([s or [] for s in records.spans] if records.has_spans else None)


def answer_token_mask(offsets: torch.Tensor, attention_mask: torch.Tensor,
                      qa: list[tuple[int, int]]) -> torch.Tensor:
    """[N, T] bool: the tokens of each record's answer, from the tokenizer's character offsets
    (never by re-tokenising the answer). qa[i] = (question end, answer start): a token is the
    answer's when it starts after the question and ends inside the answer, so a token of the
    separator alone is the question's, and one that straddles question and answer too (the
    question's text never becomes a label)."""
    q_end = torch.tensor([q for q, _ in qa])[:, None]
    a_start = torch.tensor([a for _, a in qa])[:, None]
    return (offsets[..., 0] >= q_end) & (offsets[..., 1] > a_start) & (attention_mask == 1)


def tokenize_texts(name: str, texts: list[str], spans, tokenizer, max_length: int,
                   min_length: int = 1, rows: list[int] | None = None,
                   qa: list[tuple[int, int]] | None = None) -> TokenizedSet:
    enc = tokenizer(texts, max_length=max_length, truncation=True, padding="max_length",
                    return_offsets_mapping=True, return_tensors="pt")
    lengths = enc["attention_mask"].sum(1)
    short = (lengths < min_length).nonzero().flatten()
    if len(short):
        i = int(short[0])
        raise InputError(f"{name}: row {rows[i] if rows else i + 1}: {int(lengths[i])} tokens, fewer than "
                         f"data.min_length={min_length}")
    answers = None
    if qa is not None:
        answers = answer_token_mask(enc["offset_mapping"], enc["attention_mask"], qa)
        # The first answer token must have a question before it to be predicted from.
        first = torch.where(answers.any(1), answers.int().argmax(1), torch.zeros_like(lengths))
        bad = (first < 1).nonzero().flatten()
        if len(bad):
            i = int(bad[0])
            raise InputError(f"{name}: row {rows[i] if rows else i + 1}: no answer token after the question "
                             f"within data.max_length={max_length} tokens (shorten the question or raise "
                             "data.max_length)")
    return TokenizedSet(name, enc["input_ids"], enc["attention_mask"], enc["offset_mapping"], texts, spans,
                        rows, answers)


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
        records = read_records(path, fmt, data_cfg.text_field, data_cfg.spans_field, QAFields.of(data_cfg))
        texts, rows = records.texts[:max_records], records.rows[:max_records]
        spans = [s or [] for s in records.spans[:max_records]] if records.has_spans else None
        qa = None if records.qa is None else records.qa[:max_records]
        tset = tokenize_texts(path, texts, spans, tokenizer, data_cfg.max_length, min_len, rows, qa)
    if max_records is not None and len(tset) > max_records:
        tset = tset.subset(list(range(max_records)))
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

    from trainables.config import single_forget

    forget = load_split(single_forget(data_cfg.forget), tokenizer, data_cfg)  # a list: refused
    unseen = opt(data_cfg.unseen)
    retain = opt(data_cfg.retain, min_length=2, max_records=None) if need_retain else None
    heldout = opt(data_cfg.heldout, min_length=2, max_records=data_cfg.max_records)
    prompts = None
    if data_cfg.prompts is not None:
        fmt = detect_format(data_cfg.prompts, data_cfg.format)
        prompts, _ = read_text_records(data_cfg.prompts, fmt, data_cfg.text_field, data_cfg.spans_field,
                                       QAFields.of(data_cfg))
    return DataSets(forget, retain, heldout, unseen, prompts)
