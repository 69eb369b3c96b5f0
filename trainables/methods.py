"""The registry of unlearning methods: each a small class with one loss interface.

A method sees one micro-batch and the student's (and, if it needs one, the
teacher's) logits, and returns the scalar to minimise. `normalizer` is the
global batch's denominator, so accumulation and data parallelism give the
gradient of the whole batch (see undial_loss). The caller hands teacher_logits
over: a method may overwrite them (UnDIAL writes its targets there). Baselines (gradient ascent,
GradDiff, NPO) share this interface.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainables.undial import IGNORE_INDEX, undial_loss, weight_sum


def token_nll_sum(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over positions of w * NLL(label); same shifting and weighting as undial_loss."""
    shifted_labels = labels[:, 1:]
    active = shifted_labels != IGNORE_INDEX
    if weights is not None:
        active = active & (weights[:, 1:] != 0)
    if not bool(active.any()):
        return logits.sum() * 0.0
    rows = active.nonzero(as_tuple=True)
    logp = torch.log_softmax(logits[:, :-1][rows].float(), dim=-1)
    nll = -logp.gather(-1, shifted_labels[rows][:, None]).squeeze(-1)
    w = 1.0 if weights is None else weights[:, 1:][rows].float()
    return (nll * w).sum()


@dataclass(frozen=True)
class UnDIAL:
    """Self-distillation on adjusted logits (the product's method)."""
    gamma: float
    needs_teacher: bool = True

    def loss(self, student_logits, teacher_logits, labels, weights, normalizer=None):
        return undial_loss(student_logits, teacher_logits, labels, self.gamma, weights, normalizer,
                           consume_teacher=True)


@dataclass(frozen=True)
class FineTune:
    """Plain NLL fine-tuning on the batch: the cost baseline (bench) and the retain term."""
    needs_teacher: bool = False

    def loss(self, student_logits, teacher_logits, labels, weights, normalizer=None):
        denominator = weight_sum(labels, weights) if normalizer is None else normalizer
        return token_nll_sum(student_logits, labels, weights) / denominator


@dataclass(frozen=True)
class GradientAscent:
    """Minimise -NLL on the forget set (Jang et al.): fast, and known to collapse the model."""
    needs_teacher: bool = False

    def loss(self, student_logits, teacher_logits, labels, weights, normalizer=None):
        return -FineTune().loss(student_logits, teacher_logits, labels, weights, normalizer)


METHODS = {
    "undial": lambda cfg: UnDIAL(gamma=cfg.gamma),
    "finetune": lambda cfg: FineTune(),
    "gradient_ascent": lambda cfg: GradientAscent(),
}


def build_method(method_cfg):
    """MethodConfig -> a method object with .needs_teacher and .loss(...)."""
    return METHODS[method_cfg.name](method_cfg)
