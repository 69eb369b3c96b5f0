"""Slow, obviously correct memorisation measures: the yardstick for
``trainables.metrics`` (tests and bench/eval_speed.py).

One prefix at a time, no batching, no padding, no KV cache: every next token
comes from a fresh forward over the whole sequence so far. Sequences are
plain lists of token ids (their real tokens only).
"""

from __future__ import annotations

import torch


def _device(model):
    return next(model.parameters()).device


def sequences_from_batch(input_ids, attention_mask=None) -> list[list[int]]:
    """The real tokens of each row of a right-padded batch."""
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 1:
        ids = ids[None]
    if attention_mask is None:
        return [row.tolist() for row in ids]
    lengths = torch.as_tensor(attention_mask).sum(1).tolist()
    return [ids[b, :int(t)].tolist() for b, t in enumerate(lengths)]


@torch.no_grad()
def next_token(model, prefix: list[int]) -> int:
    """argmax_v p(v | prefix), from one forward over the prefix alone."""
    x = torch.tensor([prefix], dtype=torch.long, device=_device(model))
    return int(model(input_ids=x).logits[0, -1].argmax())


def reference_ma_per_sequence(model, seqs: list[list[int]], positions: list[list[bool]] | None = None) -> list[float]:
    """MA per sequence: predict x[i] from x[:i] for i = 1..T-1, one forward per prefix.

    ``positions[b][i]``: whether label x[i] counts (default all); NaN if none does.
    """
    model.eval()
    out = []
    for b, x in enumerate(seqs):
        hits = total = 0
        for i in range(1, len(x)):
            if positions is not None and not positions[b][i]:
                continue
            total += 1
            hits += next_token(model, x[:i]) == x[i]
        out.append(hits / total if total else float("nan"))
    return out


def reference_memorization_accuracy(model, seqs, positions=None) -> float:
    vals = [v for v in reference_ma_per_sequence(model, seqs, positions) if v == v]
    return sum(vals) / len(vals) if vals else float("nan")


@torch.no_grad()
def reference_greedy(model, prefix: list[int], steps: int) -> list[int]:
    """Greedy decoding without cache: each step re-runs the model on the whole sequence."""
    seq = list(prefix)
    for _ in range(steps):
        seq.append(next_token(model, seq))
    return seq[len(prefix):]


def reference_prefix_lengths(T: int, n: int, prefix_stride: int = 1) -> list[int]:
    """i = s, 2s, ... <= T-n (stride 1: every i = 1..T-n); [1] if that is empty but T-n >= 1."""
    got = [i for i in range(1, T - n + 1) if i % prefix_stride == 0]
    if not got and T - n >= 1:
        got = [1]
    return got


def reference_generations(model, seqs,
                          prefixes: dict[int, list[int]] | None = None) -> dict[tuple[int, int], list[int]]:
    """{(b, i): greedy T_b - i tokens from x_b[:i]} for every i = 1..T_b-1 (or the given ones)."""
    model.eval()
    out = {}
    for b, x in enumerate(seqs):
        for i in (prefixes[b] if prefixes is not None else range(1, len(x))):
            out[(b, i)] = reference_greedy(model, x[:i], len(x) - i)
    return out


def reference_overlap(suffix: list[int], generated: list[int], n: int) -> float:
    true_grams = set()
    for j in range(len(suffix) - n + 1):
        true_grams.add(tuple(suffix[j:j + n]))
    n_true = len(suffix) - n + 1
    hits = 0
    for j in range(len(generated) - n + 1):
        if tuple(generated[j:j + n]) in true_grams:
            hits += 1
    return hits / n_true


def reference_el_per_sequence(model, seqs, n: int, prefix_stride: int = 1, generations=None) -> list[float]:
    out = []
    for b, x in enumerate(seqs):
        T = len(x)
        ii = reference_prefix_lengths(T, n, prefix_stride)
        total = 0.0
        for i in ii:
            g = generations[(b, i)] if generations is not None else reference_greedy(model, x[:i], T - i)
            total += reference_overlap(x[i:], g, n)
        out.append(total / len(ii))
    return out


def reference_extraction_likelihood(model, seqs, n: int, prefix_stride: int = 1, generations=None) -> float:
    """Jang et al.'s EL_n: mean over sequences of (1/(T-n)) sum_{i=1}^{T-n} overlap_i (stride 1)."""
    per = reference_el_per_sequence(model, seqs, n, prefix_stride, generations)
    return sum(per) / len(per)
