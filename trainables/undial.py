"""The UnDIAL loss: self-distillation on adjusted logits (METHOD.md).

For each participating position t (label y_t = input_ids[t+1]):
    target_t = softmax(z_teacher_t - gamma * onehot(y_t))     fixed, float32, no grad
    loss_t   = H(target_t, softmax(z_student_t))
and the loss is the weighted mean over participating positions.

Memory: a [B, T, V] logits tensor is the largest thing in a step (GPT-Neo's 50257-token
vocabulary: 100 MB at batch 4 x 128). The loss works on chunks of rows and saves only the
student's logits (which exist anyway) and the targets for backward: no log-softmax, product
or gathered copy of the logits outlives a chunk. With `consume_teacher` the targets are
written over the teacher's logits, so the teacher costs no more memory than its forward.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 1 << 22  # rows x vocabulary per chunk: 16 MB of float32 temporaries


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precision and float32 logits; float64 stays float64 (gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


class _Rows:
    """Chunks of the participating rows of a [B, T, V] tensor seen as [B*T, V].

    `flat` holds the rows' flat indices in ascending order. A chunk holds at most
    CHUNK_ELEMENTS values. A run of consecutive rows (a sequence whose every position
    participates: the common case) is cut into views, not copies; short runs (scattered
    selections) are gathered together, so the loop stays short either way.
    """

    MIN_VIEW_ROWS = 16

    def __init__(self, flat: torch.Tensor, vocab: int):
        self.flat = flat
        size = max(1, CHUNK_ELEMENTS // max(1, vocab))
        bounds = [0] + ((flat[1:] - flat[:-1]) != 1).nonzero().flatten().add(1).tolist() + [len(flat)]
        firsts = flat[bounds[:-1]].tolist() if len(flat) else []
        self.chunks = []  # (start, stop, first flat row) for a view; (start, stop, index tensor) gathered
        pending = []  # short runs waiting to be gathered: (lo, hi)

        def flush():
            lo, hi = pending[0][0], pending[-1][1]
            self.chunks.append((lo, hi, flat[lo:hi]))
            pending.clear()

        for (lo, hi), first in zip(zip(bounds[:-1], bounds[1:]), firsts):
            if hi - lo >= min(size, self.MIN_VIEW_ROWS):
                if pending:
                    flush()
                for start in range(lo, hi, size):
                    self.chunks.append((start, min(hi, start + size), first + start - lo))
            else:
                if pending and hi - pending[0][0] > size:
                    flush()
                pending.append((lo, hi))
        if pending:
            flush()

    @staticmethod
    def read(rows2d: torch.Tensor, chunk) -> torch.Tensor:
        start, stop, where = chunk
        if isinstance(where, int):
            return rows2d.narrow(0, where, stop - start)
        return rows2d.index_select(0, where)

    @staticmethod
    def write(rows2d: torch.Tensor, chunk, values: torch.Tensor) -> None:
        start, stop, where = chunk
        if isinstance(where, int):
            rows2d.narrow(0, where, stop - start).copy_(values)
        else:
            rows2d.index_copy_(0, where, values.to(rows2d.dtype))


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """[..., V] -> [N, V] sharing storage (a copy only for a non-contiguous input)."""
    return x.view(-1, x.shape[-1]) if x.is_contiguous() else x.reshape(-1, x.shape[-1])


@torch.no_grad()
def _targets(teacher_logits, rows: _Rows, labels, gamma, consume_teacher):
    """The adjusted targets of the participating rows, in float32 (float64 stays): (store,
    store_chunks), store_chunks[k] locating rows.chunks[k]'s targets in store. Written over
    the teacher's logits when the caller handed them over and that is lossless; else a
    compact [P, V] tensor whose row i is participating row i's target."""
    dtype = _compute_dtype(teacher_logits.dtype)
    vocab = teacher_logits.shape[-1]
    teacher = _as_rows(teacher_logits)
    in_place = consume_teacher and teacher_logits.dtype == dtype and teacher.data_ptr() == teacher_logits.data_ptr()
    if in_place:
        store, store_chunks = teacher, rows.chunks
    else:
        store = torch.empty(len(labels), vocab, dtype=dtype, device=teacher_logits.device)
        store_chunks = [(start, stop, start) for start, stop, _ in rows.chunks]  # views of rows start..stop
    for chunk, store_chunk in zip(rows.chunks, store_chunks):
        start, stop, _ = chunk
        z = _Rows.read(teacher, chunk).to(dtype, copy=True)
        z[torch.arange(stop - start, device=z.device), labels[start:stop]] -= float(gamma)
        _Rows.write(store, store_chunk, torch.softmax(z, dim=-1))
    return store, store_chunks


class _SoftCrossEntropy(torch.autograd.Function):
    """Per-row H(target, softmax(z)) = logsumexp(z) - <target, z> (targets sum to 1).

    Saves the student's logits, the targets and one logsumexp per row; backward rebuilds
    softmax(z) = exp(z - logsumexp) chunk by chunk and writes the gradient rows in place.
    """

    @staticmethod
    def forward(ctx, student_logits, rows, store, store_chunks):
        dtype = _compute_dtype(student_logits.dtype)
        student = _as_rows(student_logits)
        out = torch.empty(len(rows.flat), dtype=dtype, device=student_logits.device)
        lse = torch.empty_like(out)
        for chunk, store_chunk in zip(rows.chunks, store_chunks):
            start, stop, _ = chunk
            z = _Rows.read(student, chunk).to(dtype)
            target = _Rows.read(store, store_chunk)
            lse[start:stop] = torch.logsumexp(z, dim=-1)
            dot = torch.bmm(target.unsqueeze(1), z.unsqueeze(2)).flatten()  # row-wise <target, z>
            out[start:stop] = lse[start:stop] - dot
        ctx.rows, ctx.store_chunks = rows, store_chunks
        ctx.save_for_backward(student_logits, store, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        student_logits, store, lse = ctx.saved_tensors
        rows, store_chunks = ctx.rows, ctx.store_chunks
        grad = torch.zeros_like(student_logits, memory_format=torch.contiguous_format)  # viewable as rows
        student, grad_rows = _as_rows(student_logits), grad.view(-1, grad.shape[-1])
        for chunk, store_chunk in zip(rows.chunks, store_chunks):
            start, stop, _ = chunk
            z = _Rows.read(student, chunk).to(lse.dtype)
            g = (z - lse[start:stop, None]).exp_()  # softmax(z)
            g.sub_(_Rows.read(store, store_chunk)).mul_(grad_out[start:stop, None])
            _Rows.write(grad_rows, chunk, g)
        return grad, None, None, None


def undial_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                gamma: float, weights: torch.Tensor | None = None,
                normalizer: float | torch.Tensor | None = None, consume_teacher: bool = False) -> torch.Tensor:
    """Weighted soft-target cross-entropy against the gamma-adjusted teacher.

    student_logits, teacher_logits: [B, T, V] as the model returns them (unshifted).
        teacher_logits may also be teacher log-probabilities (a cached teacher):
        softmax is shift-invariant, so the target is the same.
    labels: [B, T] token ids, -100 where ignored; position t predicts labels[:, t+1].
    weights: [B, T] aligned with labels (weights[b, t] weighs the prediction of labels[b, t]).
    normalizer: divide by this instead of the batch's own weight sum (gradient accumulation
        and data parallelism pass the global batch's weight sum so every split of the batch
        gives the same gradient).
    consume_teacher: the caller hands teacher_logits over; the targets may overwrite them
        (saves a logits-sized buffer). Off by default: the caller's tensor is left untouched.

    Positions whose label is -100 never participate and never index the vocabulary. With no
    participating position the result is a zero still connected to student_logits, so
    backward and distributed all-reduce work.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
                         "logits differ in shape")
    shifted_labels = labels[:, 1:]
    if weights is None:
        shifted_weights = torch.ones(shifted_labels.shape, dtype=torch.float32, device=labels.device)
    else:
        shifted_weights = weights[:, 1:].float()
    active = (shifted_labels != IGNORE_INDEX) & (shifted_weights != 0)
    if not bool(active.any()):
        return student_logits.sum() * 0.0
    # Row (b, t) of the logits predicts shifted_labels[b, t]: only participating rows are touched.
    batch_idx, pos_idx = active.nonzero(as_tuple=True)
    rows = _Rows(batch_idx * student_logits.shape[1] + pos_idx, student_logits.shape[-1])
    store, store_chunks = _targets(teacher_logits.detach(), rows, shifted_labels[batch_idx, pos_idx], gamma,
                                 consume_teacher)
    per_position = _SoftCrossEntropy.apply(student_logits, rows, store, store_chunks)
    w = shifted_weights[batch_idx, pos_idx]
    denominator = w.sum() if normalizer is None else normalizer
    return (per_position * w).sum() / denominator


def weight_sum(labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The denominator undial_loss uses for a batch: sum of weights over participating positions."""
    shifted_labels = labels[:, 1:]
    w = torch.ones(shifted_labels.shape) if weights is None else weights[:, 1:].float()
    return (w * (shifted_labels != IGNORE_INDEX)).sum()
