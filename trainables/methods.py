"""The registry of unlearning methods: each a small class with one loss interface.

A method sees one micro-batch and returns the scalar to minimise. The loop calls

    outputs = model(input_ids, attention_mask, **method.forward_kwargs)
    loss = method.forget_loss(outputs, teacher_logits, labels, weights, normalizer)
         + method.retain_loss(retain_outputs, teacher, r_ids, r_mask, r_labels, retain_normalizer)

`forget_loss` of a logits method is its `loss(student_logits, teacher_logits, labels, weights,
normalizer)`, the interface the tests and benches call. `normalizer` is the global batch's
denominator, so accumulation and data parallelism give the gradient of the whole batch (see
undial_loss): its weight sum for token-level losses (`normalizer_kind = "tokens"`), its number of
sequences that take part for sequence-level ones ("sequences": NPO, SimNPO);
`batch_normalizer(labels, weights)` computes it. The caller hands teacher_logits over: a method
may overwrite them (UnDIAL writes its targets there), so none relies on them afterwards.

Positions take part as in undial_loss: label != -100 and weight != 0 (position t predicts
labels[:, t+1], weighted by weights[:, t+1]). A sequence log-likelihood is the weighted sum of
the log-probabilities of its participating labels; its length |y| is their weight sum (the
token count under hard or no weights).

Attributes the loop reads: needs_teacher (teacher logits on each forget micro-batch),
needs_frozen_model (a frozen copy of the model before unlearning, without forget logits: RMU's
retain hidden states), forward_kwargs, retain_weight (0: no retain term), and prepare(model,
seed, log), called on the plain model before LoRA and the strategy wrap it (RMU freezes all but
a few MLP weights there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainables.errors import InputError
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


def _participating(labels: torch.Tensor, weights: torch.Tensor | None, dtype=torch.float32):
    """(active [B, T-1] bool, w [B, T-1]) of the shifted labels."""
    shifted = labels[:, 1:]
    w = torch.ones(shifted.shape, dtype=dtype, device=labels.device) if weights is None else weights[:, 1:].to(dtype)
    return (shifted != IGNORE_INDEX) & (w != 0), w


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None):
    """Per sequence: (sum of w * log p(label) over participating positions [B], their weight sum
    |y| [B]). float32 (float64 stays float64); a row with no participating position gets 0, 0."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    active, w = _participating(labels, weights, dtype)
    length = (w * active).sum(-1)
    rows = active.nonzero(as_tuple=True)
    logp = torch.log_softmax(logits[:, :-1][rows].to(dtype), dim=-1)
    picked = logp.gather(-1, labels[:, 1:][rows][:, None]).squeeze(-1) * w[rows]
    total = torch.zeros(logits.shape[0], dtype=dtype, device=logits.device).index_add(0, rows[0], picked)
    return total, length


def sequence_count(labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The denominator of a sequence-level loss: sequences with a participating position."""
    active, _ = _participating(labels, weights)
    return active.any(-1).sum().float()


class Method:
    """Defaults of the interface; a logits method defines only `loss`."""

    needs_teacher = False
    needs_frozen_model = False
    normalizer_kind = "tokens"
    forward_kwargs: dict = {}
    retain_weight = 0.0

    def batch_normalizer(self, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """What `normalizer` is for this batch (the loop passes the global batch's)."""
        if self.normalizer_kind == "sequences":
            return sequence_count(labels, weights)
        return weight_sum(labels, weights)

    def prepare(self, model, seed: int = 0, log=print) -> None:
        """Called on the plain model before LoRA and the strategy wrap it."""

    def forget_loss(self, outputs, teacher_logits, labels, weights, normalizer=None):
        return self.loss(outputs.logits, teacher_logits, labels, weights, normalizer)

    def retain_loss(self, outputs, teacher, input_ids, attention_mask, labels, normalizer):
        """retain_weight x NLL on the retain micro-batch, over the global retain token count."""
        return self.retain_weight * token_nll_sum(outputs.logits, labels) / normalizer


def _sequence_mean(per_sequence: torch.Tensor, length: torch.Tensor, normalizer, logits: torch.Tensor):
    rows = length > 0
    if not bool(rows.any()):
        return logits.sum() * 0.0  # connected zero: backward and all-reduce still work
    denominator = rows.sum() if normalizer is None else normalizer
    return per_sequence[rows].sum() / denominator


@dataclass(frozen=True)
class UnDIAL(Method):
    """Self-distillation on adjusted logits (the product's method)."""
    gamma: float
    needs_teacher: bool = True
    retain_weight: float = 0.0

    def loss(self, student_logits, teacher_logits, labels, weights, normalizer=None):
        return undial_loss(student_logits, teacher_logits, labels, self.gamma, weights, normalizer,
                           consume_teacher=True)


@dataclass(frozen=True)
class FineTune(Method):
    """Plain NLL fine-tuning on the batch: the cost baseline (bench) and the retain term."""
    needs_teacher: bool = False
    retain_weight: float = 0.0

    def loss(self, student_logits, teacher_logits, labels, weights, normalizer=None):
        denominator = weight_sum(labels, weights) if normalizer is None else normalizer
        return token_nll_sum(student_logits, labels, weights) / denominator


@dataclass(frozen=True)
class GradientAscent(Method):
    """Minimise -NLL on the forget set (Jang et al.): fast, and known to collapse the model."""
    needs_teacher: bool = False
    retain_weight: float = 0.0

    def loss(self, student_logits, teacher_logits, labels, weights, normalizer=None):
        return -FineTune().loss(student_logits, teacher_logits, labels, weights, normalizer)


@dataclass(frozen=True)
class GradDiff(GradientAscent):
    """Gradient ascent on forget + retain_weight x NLL on retain (the config requires it > 0)."""
    retain_weight: float = 1.0


@dataclass(frozen=True)
class NPO(Method):
    """Negative preference optimisation (Zhang et al. 2024), per forget sequence:
    (2/beta) * log(1 + (pi(y|x) / pi_ref(y|x))^beta) = (2/beta) * softplus(beta * (log pi - log pi_ref)),
    the reference being the teacher (the model before unlearning); mean over sequences."""
    beta: float = 0.1
    retain_weight: float = 0.0
    needs_teacher = True
    normalizer_kind = "sequences"

    def loss(self, student_logits, teacher_logits, labels, weights, normalizer=None):
        current, length = sequence_logprob(student_logits, labels, weights)
        with torch.no_grad():  # a cached teacher's log-probs give the same log-likelihood
            reference, _ = sequence_logprob(teacher_logits.detach(), labels, weights)
        per_sequence = (2.0 / self.beta) * F.softplus(self.beta * (current - reference.to(current.dtype)))
        return _sequence_mean(per_sequence, length, normalizer, student_logits)


@dataclass(frozen=True)
class SimNPO(Method):
    """SimNPO (Fan et al. 2024): NPO without a reference, on the length-normalised
    log-likelihood with margin delta: -(2/beta) * log sigmoid(-(beta/|y|) * log pi(y|x) - delta).
    (The authors' code subtracts beta * delta; the paper's form is kept: the same at delta 0.)"""
    beta: float = 2.5
    delta: float = 0.0
    retain_weight: float = 0.0
    normalizer_kind = "sequences"

    def loss(self, student_logits, teacher_logits, labels, weights, normalizer=None):
        logp, length = sequence_logprob(student_logits, labels, weights)
        normalised = logp / length.clamp_min(torch.finfo(logp.dtype).tiny)
        per_sequence = -(2.0 / self.beta) * F.logsigmoid(-self.beta * normalised - self.delta)
        return _sequence_mean(per_sequence, length, normalizer, student_logits)


# --------------------------------------------------------------------------------------------
# RMU: representation misdirection (Li et al. 2024, WMDP)


def hidden_mse_sum(hidden: torch.Tensor, target: torch.Tensor, labels: torch.Tensor,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sum over participating positions of w * mean over features of (h - target)^2.

    hidden [B, T, D]; target broadcasts against it ([D] or [B, T, D]). The hidden state at t is
    the one that predicts labels[:, t+1], so positions take part exactly as in the logits losses."""
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    active, w = _participating(labels, weights, dtype)
    if not bool(active.any()):
        return hidden.sum() * 0.0
    rows = active.nonzero(as_tuple=True)
    h = hidden[:, :-1][rows].to(dtype)
    t = (target[:, :-1][rows] if target.dim() == 3 else target).to(dtype)
    return (((h - t) ** 2).mean(-1) * w[rows]).sum()


def random_direction(hidden_size: int, seed: int) -> torch.Tensor:
    """A fixed random unit vector: uniform [0, 1) entries normalised, as the WMDP code draws it."""
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return u / u.norm()


def default_rmu_layer(num_layers: int) -> int:
    """WMDP's layer 7 of 32, scaled to the model's depth."""
    return min(num_layers - 1, round(7 * num_layers / 32))


_MLP_PARAM = re.compile(r"\.(\d+)\.(?:mlp|fc1|fc2)\.")  # a block's MLP (GPT-2/Neo/J, Llama, NeoX, Phi-3; OPT)


@dataclass
class RMU(Method):
    """At block `layer` (0-based; its output is hidden_states[layer + 1]): forget hidden states
    pushed toward c * u (u a fixed random unit vector), retain hidden states held at the frozen
    model's (weight alpha), both as per-token MSE; only the MLP weights of `update_layers` train
    (default: layer-2 .. layer). retain_weight > 0 adds the retain NLL term as for every method."""
    layer: int | None = None
    update_layers: tuple[int, ...] | None = None
    c: float = 20.0
    alpha: float = 100.0
    retain_weight: float = 0.0
    direction: torch.Tensor | None = None  # set by prepare
    needs_frozen_model = True
    forward_kwargs = {"output_hidden_states": True}

    def prepare(self, model, seed: int = 0, log=print) -> None:
        n = model.config.num_hidden_layers
        layer = default_rmu_layer(n) if self.layer is None else self.layer
        if not 0 <= layer < n:
            raise InputError(f"method.rmu_layer: the model has {n} layers (0..{n - 1}), got {layer}")
        update = sorted(set(self.update_layers if self.update_layers is not None
                            else range(max(0, layer - 2), layer + 1)))
        if not all(0 <= k <= layer for k in update):
            raise InputError(f"method.rmu_update_layers: layers at or below method.rmu_layer ({layer}) only, "
                             f"got {update}")
        found: set[int] = set()
        for name, param in model.named_parameters():
            match = _MLP_PARAM.search(name)
            keep = match is not None and int(match.group(1)) in update
            param.requires_grad_(keep)
            if keep:
                found.add(int(match.group(1)))
        if missing := [k for k in update if k not in found]:
            raise InputError(f"method.rmu_update_layers: no MLP weights found for layer(s) {missing} of this "
                             f"model ({model.config.model_type})")
        self.layer, self.update_layers = layer, tuple(update)
        self.direction = random_direction(model.config.hidden_size, seed)
        log(f"rmu: hidden states of layer {layer}, c {self.c}, alpha {self.alpha}; "
            f"updating the MLP weights of layers {list(update)}")

    def _hidden(self, outputs) -> torch.Tensor:
        return outputs.hidden_states[self.layer + 1]

    def forget_loss(self, outputs, teacher_logits, labels, weights, normalizer=None):
        hidden = self._hidden(outputs)
        target = self.c * self.direction.to(hidden.device)
        denominator = weight_sum(labels, weights) if normalizer is None else normalizer
        return hidden_mse_sum(hidden, target, labels, weights) / denominator

    def retain_loss(self, outputs, teacher, input_ids, attention_mask, labels, normalizer):
        hidden = self._hidden(outputs)
        loss = hidden.sum() * 0.0  # connected zero when alpha and retain_weight are 0
        if self.alpha:
            frozen = teacher.hidden_states(input_ids, attention_mask, self.layer + 1)
            loss = loss + self.alpha * hidden_mse_sum(hidden, frozen, labels) / normalizer
        if self.retain_weight:
            loss = loss + super().retain_loss(outputs, teacher, input_ids, attention_mask, labels, normalizer)
        return loss


METHODS = {
    "undial": lambda cfg: UnDIAL(gamma=cfg.gamma, retain_weight=cfg.retain_weight),
    "finetune": lambda cfg: FineTune(retain_weight=cfg.retain_weight),
    "gradient_ascent": lambda cfg: GradientAscent(retain_weight=cfg.retain_weight),
    "graddiff": lambda cfg: GradDiff(retain_weight=cfg.retain_weight),
    "npo": lambda cfg: NPO(beta=cfg.npo_beta, retain_weight=cfg.retain_weight),
    "simnpo": lambda cfg: SimNPO(beta=cfg.simnpo_beta, delta=cfg.simnpo_delta, retain_weight=cfg.retain_weight),
    "rmu": lambda cfg: RMU(layer=cfg.rmu_layer,
                           update_layers=None if cfg.rmu_update_layers is None else tuple(cfg.rmu_update_layers),
                           c=cfg.rmu_c, alpha=cfg.rmu_alpha, retain_weight=cfg.retain_weight),
}


def build_method(method_cfg):
    """MethodConfig -> a method object (see the module docstring for what the loop reads)."""
    return METHODS[method_cfg.name](method_cfg)
