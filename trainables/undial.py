"""The UnDIAL loss: self-distillation on adjusted logits (METHOD.md).

For each participating position t (label y_t = input_ids[t+1]):
    target_t = softmax(z_teacher_t - gamma * onehot(y_t))     fixed, float32, no grad
    loss_t   = H(target_t, softmax(z_student_t))
and the loss is the weighted mean over participating positions.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def adjusted_target(teacher_logits: torch.Tensor, labels: torch.Tensor, gamma: float) -> torch.Tensor:
    """softmax(z - gamma * onehot(y)) in float32, rows [P, V] and labels [P]."""
    with torch.no_grad():
        z = teacher_logits.detach().float()
        if z.data_ptr() == teacher_logits.data_ptr():  # never edit the caller's tensor in place
            z = z.clone()
        z.scatter_add_(-1, labels[:, None], torch.full_like(z[:, :1], -float(gamma)))
        return torch.softmax(z, dim=-1)


def undial_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                gamma: float, weights: torch.Tensor | None = None,
                normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """Weighted soft-target cross-entropy against the gamma-adjusted teacher.

    student_logits, teacher_logits: [B, T, V] as the model returns them (unshifted).
        teacher_logits may also be teacher log-probabilities (a cached teacher):
        softmax is shift-invariant, so the target is the same.
    labels: [B, T] token ids, -100 where ignored; position t predicts labels[:, t+1].
    weights: [B, T] aligned with labels (weights[b, t] weighs the prediction of labels[b, t]).
    normalizer: divide by this instead of the batch's own weight sum (gradient accumulation
        and data parallelism pass the global batch's weight sum so every split of the batch
        gives the same gradient).

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
    # Select participating rows first: the float32 work is then [P, V], not [B, T, V].
    rows = active.nonzero(as_tuple=True)
    student = student_logits[:, :-1][rows].float()
    target = adjusted_target(teacher_logits[:, :-1][rows], shifted_labels[rows], gamma)
    per_position = -(target * torch.log_softmax(student, dim=-1)).sum(-1)
    w = shifted_weights[rows]
    denominator = w.sum() if normalizer is None else normalizer
    return (per_position * w).sum() / denominator


def weight_sum(labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The denominator undial_loss uses for a batch: sum of weights over participating positions."""
    shifted_labels = labels[:, 1:]
    w = torch.ones(shifted_labels.shape) if weights is None else weights[:, 1:].float()
    return (w * (shifted_labels != IGNORE_INDEX)).sum()
