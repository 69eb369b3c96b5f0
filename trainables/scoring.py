"""Per-token log-probabilities under a causal LM: the primitive several
measures and the `reference` subset policy share."""

from __future__ import annotations

import torch


@torch.no_grad()
def token_log_probs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    batch_size: int = 32) -> torch.Tensor:
    """log p(x_t | x_<t) for every token, shape [N, T], float32.

    Position 0 (no prefix) and padded positions are 0. One teacher-forced
    forward pass per batch.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    device = next(model.parameters()).device
    out = torch.zeros(input_ids.shape, dtype=torch.float32)
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start:start + batch_size].to(device)
        mask = attention_mask[start:start + batch_size].to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        logp = logp * mask[:, 1:]
        out[start:start + batch_size, 1:] = logp.cpu()
    return out
