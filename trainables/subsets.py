"""Subset S of UnDIAL ("FUnDIAL"): which token positions take part, and how much.

A *policy* selects token positions of the forget sequences; a *weighting*
turns the selection into the per-token weights the UnDIAL loss takes.

Conventions (shared with the loss): ``weights[b, t]`` weighs the prediction
of token ``input_ids[b, t]`` from the prefix ``< t``. A position *takes part*
only if it is a real token (attention mask 1) that has a real prefix, i.e.
not the first real token of its row (position 0 under right padding). Every
mask and weight produced here is 0 outside those positions.

Text-based policies (entities, nouns, pattern, spans) find character spans in
the text and map them to tokens through the fast tokenizer's offsets
(``return_offsets_mapping=True``), never by re-tokenising the span: a
byte-level BPE token such as " Alice" carries its leading space, so the span
"Alice" tokenised alone gives different ids. A token is selected when its
character range overlaps a span.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Iterable, Sequence

import torch

from trainables.config import SUBSET_MODES as MODES
from trainables.config import SUBSET_POLICIES as POLICIES  # noqa: F401 (re-exported)
from trainables.config import SubsetSpec, _compile_user_pattern, _number
from trainables.errors import InputError
from trainables.scoring import token_log_probs


_FIELD = "method.subset"


# --------------------------------------------------------------------------- spec


# ------------------------------------------------------------- positions & offsets


def participating_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that can take part: real tokens with a real prefix, [N, T] bool.

    Under right padding this is "real and t >= 1"; under left padding the
    first real token of each row (whose prefix is only padding) is excluded too.
    """
    real = torch.as_tensor(attention_mask).bool()
    first = real & (real.long().cumsum(dim=1) == 1)
    return real & ~first


def char_spans_to_token_mask(offsets, attention_mask, spans: Sequence[Sequence[tuple[int, int]]]) -> torch.Tensor:
    """Tokens whose character range overlaps a span, [N, T] bool.

    Token t with offsets [s, e) is selected iff s < span_end and e > span_start
    for some span, it is a real token (attention mask 1) and e > s (special
    tokens have empty ranges). Offsets from a byte-level BPE tokenizer may
    include a token's leading space; overlap is still the right test.
    Spans with end <= start select nothing.
    """
    offsets = torch.as_tensor(offsets)
    attention_mask = torch.as_tensor(attention_mask)
    if offsets.dim() != 3 or offsets.shape[-1] != 2:
        raise ValueError(f"offsets must be [N, T, 2], got {tuple(offsets.shape)}")
    if attention_mask.shape != offsets.shape[:2]:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} does not match offsets "
                         f"{tuple(offsets.shape)}")
    if len(spans) != offsets.shape[0]:
        raise ValueError(f"{len(spans)} span lists for {offsets.shape[0]} sequences")
    starts, ends = offsets[..., 0].long(), offsets[..., 1].long()
    out = torch.zeros(attention_mask.shape, dtype=torch.bool)
    for b, row in enumerate(spans):
        row = [(int(s), int(e)) for s, e in row if int(e) > int(s)]
        if not row:
            continue
        sp = torch.tensor(row, dtype=torch.long)                      # [S, 2]
        hit = (starts[b, :, None] < sp[None, :, 1]) & (ends[b, :, None] > sp[None, :, 0])
        out[b] = hit.any(dim=1)
    return out & attention_mask.bool() & (ends > starts)


# ------------------------------------------------------------------- patterns

_EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
# International / US / UK-ish phone numbers: optional +CC or 00CC, optional
# (area) or (0), then digits possibly separated by single spaces, dashes or
# dots, and an optional extension. Digit count is checked after matching
# (7..15, extension excluded).
_PHONE = (r"(?<![\w+(])"
          r"(?:(?:\+|\b00)\d{1,3}[ .-]?)?"
          r"(?:\(\d{1,5}\)[ .-]?|\(0\)[ .-]?)?"
          r"\d(?:[ .-]?\d){4,14}"
          r"(?:[ ]?(?:x|ext\.?|extension)[ ]?\d{1,5})?"
          r"(?!\w)")
# Six or more digits, possibly grouped by single spaces, dashes or dots.
_DIGITS = r"(?<!\d)\d(?:[ .-]?\d){5,}(?!\d)"
# IBAN-like: 2 letters, 2 check digits, 10-30 alphanumerics, either in one
# run or in groups of 4 separated by spaces (last group 1-4).
_IBAN = (r"\b[A-Z]{2}\d{2}(?:[A-Z0-9]{10,30}"
         r"|(?:[ ][A-Z0-9]{4}){2,7}(?:[ ][A-Z0-9]{1,4})?)\b")

_BUILTIN = {
    "email": re.compile(_EMAIL),
    "phone": re.compile(_PHONE, re.IGNORECASE),
    "digits": re.compile(_DIGITS),
    "iban": re.compile(_IBAN),
}
_EXT = re.compile(r"(?:x|ext\.?|extension)[ ]?\d{1,5}$", re.IGNORECASE)


def _phone_ok(match: str) -> bool:
    core = _EXT.sub("", match)
    n = sum(ch.isdigit() for ch in core)
    return 7 <= n <= 15


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for s, e in sorted(spans):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def pattern_spans(text: str, extra_patterns: Iterable[str] = ()) -> list[tuple[int, int]]:
    """Character spans of PII-like strings, sorted and merged.

    Builtin (always on): e-mail addresses, phone numbers, runs of >= 6 digits
    (possibly grouped by spaces, dashes or dots), IBAN-like strings. Extra
    user regexes add their whole matches; an invalid one -> InputError.
    """
    extra = [_compile_user_pattern(p) for p in extra_patterns]
    found: list[tuple[int, int]] = []
    for name, rx in _BUILTIN.items():
        for m in rx.finditer(text):
            if name == "phone" and not _phone_ok(m.group(0)):
                continue
            found.append(m.span())
    for rx in extra:
        found.extend(m.span() for m in rx.finditer(text) if m.end() > m.start())
    return _merge(found)


# ---------------------------------------------------------------------- spaCy


def load_spacy(name):
    """A spaCy pipeline by name or path (``spacy.load``), or an already built
    ``spacy.Language`` returned as is. ``"blank:en"`` gives a blank pipeline.
    Not installed -> InputError with the install command. Pipelines loaded by
    name are cached (a few), so repeated calls do not reload them."""
    import spacy

    if isinstance(name, spacy.language.Language):
        return name
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{_FIELD}.spacy_pipeline: must be a pipeline name or path, got {name!r}")
    return _load_spacy_cached(name)


@functools.lru_cache(maxsize=4)
def _load_spacy_cached(name: str):
    import spacy

    try:
        return spacy.load(name)
    except OSError as e:
        looks_like_path = os.sep in name or "/" in name or name.startswith(".")
        if looks_like_path and not os.path.exists(name):
            raise InputError(f"spaCy pipeline '{name}' not found: no such directory") from None
        if "E050" in str(e) or "Can't find model" in str(e):
            raise InputError(f"spaCy pipeline '{name}' is not installed: pip install {name} "
                             f"(or python -m spacy download {name})") from None
        raise InputError(f"spaCy pipeline '{name}' could not be loaded: {str(e).splitlines()[0]}") from None
    except (ImportError, ValueError) as e:   # e.g. "blank:zz", version mismatch
        raise InputError(f"spaCy pipeline '{name}' could not be loaded: "
                         f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None


def _assigns(nlp) -> set[str]:
    out: set[str] = set()
    for pipe_name in nlp.pipe_names:
        out.update(nlp.get_pipe_meta(pipe_name).assigns)
    return out


def _factories(nlp) -> set[str]:
    return {nlp.get_pipe_meta(n).factory for n in nlp.pipe_names}


def _describe(nlp) -> str:
    return f"spaCy pipeline '{nlp.meta.get('lang', '?')}_{nlp.meta.get('name', '?')}' " \
           f"(components: {', '.join(nlp.pipe_names) or 'none'})"


def _entity_label_set(nlp) -> set[str] | None:
    """Labels the entity-setting components can produce, or None if unknown."""
    labels: set[str] = set()
    any_ents = False
    for pipe_name, pipe in nlp.pipeline:
        if "doc.ents" not in nlp.get_pipe_meta(pipe_name).assigns:
            continue
        any_ents = True
        try:
            labels.update(pipe.labels)
        except Exception:     # a component without a labels property: cannot tell
            return None
    return labels if any_ents else None


_NOUN_POS = {"NOUN", "PROPN"}
_NOUN_TAGS = {"NN", "NNS", "NNP", "NNPS"}


def spacy_spans(texts: Sequence[str], pipeline_name_or_nlp, kind: str,
                entity_labels: Sequence[str] = (), batch_size: int = 64) -> list[list[tuple[int, int]]]:
    """Character spans per text: named entities (``kind="entities"``, filtered
    by ``entity_labels`` when given) or nouns (``kind="nouns"``: noun chunks
    when the pipeline has a parser, else tokens whose pos_ is NOUN/PROPN).
    A pipeline that cannot produce what ``kind`` needs -> InputError."""
    if kind not in ("entities", "nouns"):
        raise ValueError(f"kind must be 'entities' or 'nouns', got {kind!r}")
    nlp = load_spacy(pipeline_name_or_nlp)
    assigns, factories = _assigns(nlp), _factories(nlp)
    entity_labels = tuple(entity_labels)

    if kind == "entities":
        static_ok = "doc.ents" in assigns
        if static_ok and entity_labels:
            known = _entity_label_set(nlp)
            unknown = [lab for lab in entity_labels if known is not None and lab not in known]
            if unknown:
                raise InputError(f"{_FIELD}.entity_labels: {', '.join(map(repr, unknown))} not produced by "
                                 f"{_describe(nlp)}; its labels: {', '.join(sorted(known)) or 'none'}")
    else:
        has_parser = "token.dep" in assigns
        has_pos = bool({"token.pos", "token.tag"} & assigns) or "attribute_ruler" in factories
        static_ok = has_parser or has_pos

    docs = list(nlp.pipe(list(texts), batch_size=batch_size))

    if not static_ok:
        # A custom component may set the annotation without declaring it.
        attrs = ("ENT_IOB",) if kind == "entities" else ("DEP", "POS", "TAG")
        if not any(doc.has_annotation(a) for doc in docs for a in attrs):
            if kind == "entities":
                lacks = "no named-entity recognizer (ner or entity_ruler)"
                need = "policy 'entities' needs one"
            else:
                lacks = "neither a dependency parser nor a part-of-speech tagger"
                need = "policy 'nouns' needs one to find nouns"
            raise InputError(f"{_describe(nlp)} has {lacks}: {need} (e.g. en_core_web_sm)")

    out: list[list[tuple[int, int]]] = []
    for doc in docs:
        if kind == "entities":
            spans = [(e.start_char, e.end_char) for e in doc.ents
                     if not entity_labels or e.label_ in entity_labels]
        else:
            spans = None
            if doc.has_annotation("DEP"):
                try:
                    spans = [(c.start_char, c.end_char) for c in doc.noun_chunks]
                except (NotImplementedError, ValueError):
                    spans = None     # no noun-chunk iterator for this language
            if spans is None:
                if not (doc.has_annotation("POS") or doc.has_annotation("TAG")) and not has_pos:
                    raise InputError(f"{_describe(nlp)} has a parser but its language has no noun "
                                     f"chunker and no part-of-speech tagger: policy 'nouns' cannot work")
                spans = [(t.idx, t.idx + len(t.text)) for t in doc
                         if t.pos_ in _NOUN_POS or (not t.pos_ and t.tag_ in _NOUN_TAGS)]
        out.append(_merge(spans))
    return out


# ------------------------------------------------------------------ reference


def reference_mask(model_logprobs: torch.Tensor, reference_logprobs: torch.Tensor,
                   attention_mask: torch.Tensor, tau: float) -> torch.Tensor:
    """Positions where log p_model(x_t|x_<t) - log p_ref(x_t|x_<t) > tau
    (nats), among positions that take part. [N, T] bool."""
    if model_logprobs.shape != reference_logprobs.shape:
        raise ValueError(f"log-prob shapes differ: {tuple(model_logprobs.shape)} vs "
                         f"{tuple(reference_logprobs.shape)}")
    diff = model_logprobs.float() - reference_logprobs.float()
    return (diff > float(tau)) & participating_mask(attention_mask)


def _vocab_size(model) -> int | None:
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    cfg = getattr(model, "config", None)
    size = getattr(cfg, "vocab_size", None)
    if size is None and cfg is not None and hasattr(cfg, "get_text_config"):
        size = getattr(cfg.get_text_config(), "vocab_size", None)
    return size


# ------------------------------------------------------------------- dispatch


def _record_spans_for(spec: SubsetSpec, texts: Sequence[str], record_spans) -> list[list[tuple[int, int]]]:
    missing = "policy 'spans' needs a 'spans' field in each forget record"
    if record_spans is None:
        raise InputError(missing)
    if len(record_spans) != len(texts):
        raise ValueError(f"{len(record_spans)} span lists for {len(texts)} texts")
    out = []
    for i, (text, row) in enumerate(zip(texts, record_spans)):
        if row is None:
            raise InputError(f"{missing} (record {i} has none)")
        if not isinstance(row, (list, tuple)):
            raise InputError(f"forget record {i}: 'spans' must be a list of [start, end, label], got {row!r}")
        keep = []
        for item in row:
            if isinstance(item, dict):
                s, e, label = item.get("start"), item.get("end"), item.get("label")
            elif isinstance(item, (list, tuple)) and len(item) in (2, 3):
                s, e = item[0], item[1]
                label = item[2] if len(item) == 3 else None
            else:
                raise InputError(f"forget record {i}: bad span {item!r} (expected [start, end, label])")
            if (isinstance(s, bool) or isinstance(e, bool) or not isinstance(s, int) or not isinstance(e, int)
                    or not 0 <= s < e <= len(text)):
                raise InputError(f"forget record {i}: span {item!r} is not a character range "
                                 f"0 <= start < end <= {len(text)} of its text")
            if spec.span_labels and label not in spec.span_labels:
                continue
            keep.append((s, e))
        out.append(keep)
    return out


def select_positions(spec: SubsetSpec, *, texts: Sequence[str] | None, offsets, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor, record_spans=None, model=None, reference_model=None,
                     nlp=None, batch_size: int = 32) -> torch.Tensor:
    """The positions policy ``spec.policy`` selects, [N, T] bool, always within
    the positions that take part (real tokens with a real prefix).

    ``texts`` must be the exact strings that were tokenised (``offsets`` index
    into them); ``texts``/``offsets`` are unused by ``all`` and ``reference``.
    ``nlp`` overrides ``spec.spacy_pipeline``. ``reference`` needs ``model``
    and ``reference_model``, loaded causal LMs sharing the tokenizer.
    """
    input_ids = torch.as_tensor(input_ids)
    attention_mask = (torch.ones_like(input_ids) if attention_mask is None
                      else torch.as_tensor(attention_mask))
    part = participating_mask(attention_mask)
    policy = spec.policy

    if policy == "all":
        return part

    if policy == "reference":
        if model is None or reference_model is None:
            raise ValueError("policy 'reference' needs both model and reference_model (loaded causal LMs)")
        v_model, v_ref = _vocab_size(model), _vocab_size(reference_model)
        if v_model is not None and v_ref is not None and v_model != v_ref:
            raise InputError(f"{_FIELD}.reference_model: vocabulary size {v_ref} differs from the model's "
                             f"{v_model}: the reference must share the model's tokenizer")
        lp_model = token_log_probs(model, input_ids, attention_mask, batch_size=batch_size)
        lp_ref = token_log_probs(reference_model, input_ids, attention_mask, batch_size=batch_size)
        return reference_mask(lp_model, lp_ref, attention_mask, spec.tau)

    # text-based policies
    if texts is None or offsets is None:
        raise ValueError(f"policy {policy!r} needs texts and offsets (return_offsets_mapping=True)")
    texts = list(texts)
    if len(texts) != input_ids.shape[0]:
        raise ValueError(f"{len(texts)} texts for {input_ids.shape[0]} sequences")
    if policy == "pattern":
        spans = [pattern_spans(t, spec.patterns) for t in texts]
    elif policy in ("entities", "nouns"):
        spans = spacy_spans(texts, nlp if nlp is not None else spec.spacy_pipeline, policy,
                            entity_labels=spec.entity_labels if policy == "entities" else ())
    elif policy == "spans":
        spans = _record_spans_for(spec, texts, record_spans)
    else:  # pragma: no cover - SubsetSpec validates the policy
        raise InputError(f"{_FIELD}.policy: unknown policy {policy!r}")
    return char_spans_to_token_mask(offsets, attention_mask, spans) & part


# ------------------------------------------------------------------ weighting


def selection_weights(selected: torch.Tensor, attention_mask: torch.Tensor, mode: str,
                      soft_weight: float = 10.0) -> torch.Tensor:
    """Per-token weights, [N, T] float32. hard: 1 on selected, 0 elsewhere;
    soft: ``soft_weight`` on selected, 1 elsewhere. Positions that do not take
    part (padding, the first real token) are 0 in both modes."""
    if mode not in MODES:
        raise InputError(f"{_FIELD}.mode: unknown mode {mode!r} (choose from {', '.join(MODES)})")
    c = _number("soft_weight", soft_weight)
    if not c > 0:
        raise InputError(f"{_FIELD}.soft_weight: must be > 0, got {soft_weight!r}")
    selected = torch.as_tensor(selected).bool()
    part = participating_mask(attention_mask)
    if selected.shape != part.shape:
        raise ValueError(f"selection {tuple(selected.shape)} does not match attention_mask {tuple(part.shape)}")
    if mode == "hard":
        w = selected.float()
    else:
        w = torch.where(selected, torch.tensor(c), torch.tensor(1.0))
    return w * part.float()


def describe_selection(selected: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """Counts for logging. ``real_tokens`` counts the positions that can take
    part (real tokens with a real prefix), so policy ``all`` gives fraction 1."""
    part = participating_mask(attention_mask)
    n_sel = int((torch.as_tensor(selected).bool() & part).sum())
    n_real = int(part.sum())
    return {"selected_tokens": n_sel, "real_tokens": n_real,
            "fraction": (n_sel / n_real) if n_real else 0.0}
