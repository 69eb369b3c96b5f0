"""Membership-inference attacks and the privacy figures built on them (open-unlearning's six
attacks, MUSE's PrivLeak, TOFU's forget quality on sequence loss).

Every score is oriented as in trainables.metrics.mia_scores: higher = more member-like, so an
AUC of 1 (forget vs unseen) means every forget record is recognised and 0.5 means none is.

- loss:      mean token log-prob                         (Yeom et al. 2018)
- zlib:      summed log-prob / zlib-compressed bytes of the text (Carlini et al. 2021)
- min_k:     mean of the lowest k% token log-probs        (Shi et al. 2024)
- min_k_pp:  the same over (log p(x_t) - mu_t) / sigma_t, mu_t and sigma_t the mean and std of
             log p(z) for z drawn from the model's own next-token distribution (Zhang et al. 2024)
- ref:       the model's mean log-prob minus a reference (the retain model's) (Carlini et al. 2022)
- grad_norm: minus the norm of the sequence loss's gradient w.r.t. the parameters (members sit
             where the loss is flat); one backward per sequence, so only when listed.

The logit attacks come from one teacher-forced forward per batch (`attack_scores`); the pure
per-sequence functions below take one sequence's token figures.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch

from trainables.errors import InputError
from trainables.metric_names import LOGIT_ATTACKS
from trainables.metrics import _eval_mode

# --------------------------------------------------------------------------- per-sequence math


def _lowest_mean(values: torch.Tensor, k: float) -> float:
    """Mean of the lowest max(1, floor(k * n)) values (as metrics.mia_scores counts them)."""
    m = max(1, int(k * values.numel()))
    return float(torch.sort(values).values[:m].mean())


def loss_score(logp: torch.Tensor) -> float:
    return float(logp.mean())


def zlib_score(logp: torch.Tensor, text: str) -> float:
    """-(NLL sum) / zlib bytes: a sequence that is cheap to compress (repetitive) is expected to
    be likely, so its likelihood counts for less."""
    return float(logp.sum()) / len(zlib.compress(text.encode("utf-8")))


def min_k_score(logp: torch.Tensor, k: float) -> float:
    return _lowest_mean(logp, k)


def min_k_pp_score(logp: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, k: float) -> float:
    return _lowest_mean((logp - mu) / sigma, k)


def ref_scores(model_loss, reference_loss) -> np.ndarray:
    """Loss scores (mean log-probs) calibrated by a reference model's on the same sequences."""
    a, b = np.asarray(model_loss, np.float64), np.asarray(reference_loss, np.float64)
    if a.shape != b.shape:
        raise InputError(f"reference scores: {b.size} sequences against the model's {a.size}")
    return a - b


def token_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p(target), mu, sigma) per position of next-token logits [..., T, V] and targets [..., T]:
    mu_t = E_p[log p], sigma_t = sqrt(Var_p[log p]) under the model's own distribution at t."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    probs = logprobs.exp()
    logp = logprobs.gather(-1, targets[..., None]).squeeze(-1)
    mu = (probs * logprobs).sum(-1)
    var = (probs * logprobs.square()).sum(-1) - mu.square()
    # a one-hot distribution has no spread: floor it so the z-score stays finite
    sigma = var.clamp_min(1e-12).sqrt()
    return logp, mu, sigma


# --------------------------------------------------------------------------- figures from scores


def privleak(auc_model: float, auc_retain: float) -> float:
    """(AUC_model - AUC_retain) / AUC_retain: 0 = as private as the retain model, > 0 leaks more,
    < 0 over-unlearned. MUSE / open-unlearning orient AUC the other way: their sign is reversed."""
    if not auc_retain > 0:
        return math.nan
    return (float(auc_model) - float(auc_retain)) / float(auc_retain)


def forget_quality(model_losses, retain_losses) -> float:
    """Two-sample Kolmogorov-Smirnov p-value between the per-sequence forget losses of a model and
    of the retain model: high = indistinguishable (TOFU's forget quality, on sequence loss)."""
    from scipy.stats import ks_2samp

    a = np.asarray(model_losses, np.float64).reshape(-1)
    b = np.asarray(retain_losses, np.float64).reshape(-1)
    if a.size == 0 or b.size == 0:
        raise InputError("forget quality needs at least one loss on each side")
    return float(ks_2samp(a, b).pvalue)


# --------------------------------------------------------------------------- models -> scores


def _scored(mask: torch.Tensor, token_mask) -> torch.Tensor:
    """[N, T] bool: the tokens whose prediction counts (real, and in `token_mask` where given:
    a Q&A set's answer tokens); the first token of a row is never predicted."""
    sel = mask.bool().clone()
    if token_mask is not None:
        sel &= torch.as_tensor(token_mask).bool()
    sel[:, 0] = False
    empty = [b for b in range(sel.shape[0]) if not sel[b].any()]
    if empty:
        raise InputError(f"membership scores need sequences of at least 2 tokens; sequence {empty[0]} "
                         "has no predicted token")
    return sel


@torch.no_grad()
def attack_scores(model, input_ids, attention_mask, attacks, k: float = 0.2, texts: list[str] | None = None,
                  batch_size: int = 32, token_mask=None) -> dict[str, np.ndarray]:
    """{attack: per-sequence scores} for the logit attacks named in `attacks` (loss, zlib, min_k,
    min_k_pp), from one forward per batch of right-padded rows; only the predictions of the
    tokens in attention_mask (and token_mask, where given) count. zlib needs `texts` (one per
    row, the text its tokens cover): without them it is absent."""
    if not 0 < k <= 1:
        raise InputError(f"eval.mia_k: expected a number in (0, 1], got {k}")
    wanted = [a for a in attacks if a in LOGIT_ATTACKS and (a != "zlib" or texts is not None)]
    ids = torch.as_tensor(input_ids)
    mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask)
    n = ids.shape[0]
    out = {a: np.zeros(n) for a in wanted}
    if not wanted or n == 0:
        return out
    sel = _scored(mask, token_mask)
    device = next(model.parameters()).device
    with _eval_mode(model):
        _score_batches(model, ids, mask, sel, wanted, k, texts, batch_size, device, out)
    return out


def _score_batches(model, ids, mask, sel, wanted, k, texts, batch_size, device, out) -> None:
    n = ids.shape[0]
    for s in range(0, n, batch_size):
        b_ids, b_mask = ids[s:s + batch_size], mask[s:s + batch_size]
        width = max(int(b_mask.sum(1).max()), 2)  # trim padding columns common to the batch
        logits = model(input_ids=b_ids[:, :width].to(device), attention_mask=b_mask[:, :width].to(device)).logits
        logp, mu, sigma = (t.cpu().double() for t in token_stats(logits[:, :-1], b_ids[:, 1:width].to(device)))
        for r in range(b_ids.shape[0]):
            b = s + r
            chosen = sel[b, 1:width]
            lp = logp[r][chosen]
            for a in wanted:
                if a == "loss":
                    out[a][b] = loss_score(lp)
                elif a == "zlib":
                    out[a][b] = zlib_score(lp, texts[b])
                elif a == "min_k":
                    out[a][b] = min_k_score(lp, k)
                else:
                    out[a][b] = min_k_pp_score(lp, mu[r][chosen], sigma[r][chosen], k)


def grad_norm_scores(model, input_ids, attention_mask=None, token_mask=None) -> np.ndarray:
    """-||d mean-NLL / d theta||_2 per sequence, over every floating-point parameter (frozen
    ones included, so a LoRA run and its original are measured alike). torch.autograd.grad
    leaves .grad and any wrapper's gradient hooks untouched."""
    ids = torch.as_tensor(input_ids)
    mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask)
    sel = _scored(mask, token_mask)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.is_floating_point()]
    frozen = [p for p in params if not p.requires_grad]
    out = np.zeros(ids.shape[0])
    was_training = model.training
    model.eval()  # no dropout (metrics._eval_mode would also turn gradients off)
    try:
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            for b in range(ids.shape[0]):
                t = int(mask[b].sum())
                row = ids[b:b + 1, :t].to(device)
                logits = model(input_ids=row, attention_mask=mask[b:b + 1, :t].to(device)).logits[0, :-1].float()
                chosen = sel[b, 1:t].to(device)
                loss = torch.nn.functional.cross_entropy(logits[chosen], row[0, 1:][chosen])
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                sq = sum(float(g.double().square().sum()) for g in grads if g is not None)
                out[b] = -math.sqrt(sq)
    finally:
        for p in frozen:
            p.requires_grad_(False)
        model.train(was_training)
    return out
