"""Measures of a Q&A set, on its answer tokens only (data.TokenizedSet.answer_mask).

The question is context: it conditions every answer token but is never scored. MA, NLL
(perplexity) and the membership scores come from one teacher-forced forward over the whole
sequence, counting only the positions whose label is an answer token; EL_n prompts the model
with the question (and from there with longer prefixes that end inside the answer) and scores
its greedy continuation against the rest of the answer. With an all-true answer mask each
figure equals the plain one of trainables.metrics (tested).
"""

from __future__ import annotations

import numpy as np
import torch

from trainables.errors import InputError
from trainables.metrics import _as_batch, _device, _eval_mode, _ngram_overlap, _ns, greedy_suffix_generations


def answer_starts(answer_mask: torch.Tensor) -> list[int]:
    """The index of each row's first answer token (rows with none: -1)."""
    mask = torch.as_tensor(answer_mask).bool()
    first = mask.int().argmax(1)
    return [int(f) if bool(row.any()) else -1 for f, row in zip(first, mask)]


@torch.no_grad()
def answer_sequence_scores(model, input_ids, attention_mask, answer_mask, position_mask=None,
                           batch_size: int = 32, k: float = 0.2) -> dict[str, np.ndarray]:
    """metrics.sequence_scores restricted to answer tokens: per sequence MA, summed NLL and
    token count, loss / Min-K% membership scores over the answer's label positions, and with
    `position_mask` the MA on its positions inside the answer (`ma_private`, NaN where none)."""
    ids, mask, lengths = _as_batch(input_ids, attention_mask)
    answer = torch.as_tensor(answer_mask).bool() & mask.bool()
    if answer.shape != ids.shape:
        raise InputError(f"answer_mask shape {tuple(answer.shape)} does not match input_ids {tuple(ids.shape)}")
    counts = answer[:, 1:].sum(1)
    if bool((counts == 0).any()):
        raise InputError(f"sequence {int((counts == 0).nonzero()[0])} has no answer token after its first token")
    sel = None if position_mask is None else torch.as_tensor(position_mask).bool()
    device = _device(model)
    n = ids.shape[0]
    out = {name: np.zeros(n) for name in ("ma", "nll", "mia_loss", "mia_min_k")}
    out["tokens"] = counts.numpy().astype(np.int64)
    if sel is not None:
        out["ma_private"] = np.zeros(n)
    with _eval_mode(model):
        for s in range(0, n, batch_size):
            b_ids, b_mask = ids[s:s + batch_size], mask[s:s + batch_size]
            width = max(int(b_mask.sum(1).max()), 1)
            logits = model(input_ids=b_ids[:, :width].to(device),
                           attention_mask=b_mask[:, :width].to(device)).logits[:, :-1].float()
            target = b_ids[:, 1:width].to(device)
            pred = logits.argmax(-1).cpu()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, target[..., None]).squeeze(-1).cpu().double()
            scored = answer[s:s + batch_size, 1:width]
            hit = (pred == b_ids[:, 1:width]) & scored
            for r in range(b_ids.shape[0]):
                b = s + r
                lp = logp[r][scored[r]]
                out["ma"][b] = float(hit[r].sum()) / lp.numel()
                out["nll"][b] = -float(lp.sum())
                out["mia_loss"][b] = float(lp.mean())
                m = max(1, int(k * lp.numel()))
                out["mia_min_k"][b] = float(torch.sort(lp).values[:m].mean())
                if sel is not None:
                    chosen = scored[r] & sel[b, 1:width]
                    count = int(chosen.sum())
                    out["ma_private"][b] = float((hit[r] & chosen).sum()) / count if count else float("nan")
    return out


def answer_prefix_lengths(start: int, length: int, n: int, prefix_stride: int = 1) -> list[int]:
    """The prefix lengths i at which EL_n scores an answer starting at token `start` of a
    sequence of real length `length`: i = start, start + s, ... <= length - n (the first is
    the question alone)."""
    return list(range(start, length - n + 1, prefix_stride))


def answer_extraction_likelihood(model, input_ids, attention_mask, answer_mask, n, prefix_stride: int = 1,
                                 batch_size: int = 32, progress: bool = False, rows=None) -> dict[int, list[float]]:
    """{n: per-sequence EL_n} with every prefix at or after the question: the mean over
    i in answer_prefix_lengths of the n-gram overlap of the greedy continuation of x[:i] with
    the true x[i:]. `rows` (source rows, for errors) default to 1-based indices."""
    ns = _ns(n)
    ids, mask, lengths = _as_batch(input_ids, attention_mask)
    starts = answer_starts(torch.as_tensor(answer_mask).bool() & mask.bool())
    for b, (a0, t) in enumerate(zip(starts, lengths)):
        if a0 < 1 or t - a0 < ns[-1]:
            row = rows[b] if rows else b + 1
            raise InputError(f"eval.el_n: EL_{ns[-1]} needs answers of at least {ns[-1]} tokens; row {row} has "
                             f"{max(t - a0, 0) if a0 >= 1 else 0}")
    scored = {nn: [answer_prefix_lengths(a0, t, nn, prefix_stride) for a0, t in zip(starts, lengths)] for nn in ns}
    needed = {b: sorted({i for nn in ns for i in scored[nn][b]}) for b in range(len(lengths))}
    generations = greedy_suffix_generations(model, ids, mask, needed, batch_size=batch_size, progress=progress)
    res = {}
    for nn in ns:
        per = []
        for b, t in enumerate(lengths):
            x = ids[b, :t].tolist()
            ov = [_ngram_overlap(x[i:], generations[(b, i)], nn) for i in scored[nn][b]]
            per.append(sum(ov) / len(ov))
        res[nn] = per
    return res
