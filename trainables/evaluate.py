"""The evaluation suite composed from trainables.metrics: what `undial unlearn`
reports before and after, and what `undial eval` prints for any model."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from trainables.data import DataSets
from trainables.errors import InputError


def load_result_model(path: str | Path, dtype: str = "fp32", device="cpu", trust_remote_code: bool = False):
    """A saved result: a full model folder, or a PEFT adapter folder (merged onto its base)."""
    from trainables.models import load_causal_lm

    path = Path(path)
    if not path.exists():
        raise InputError(f"--model: {path} does not exist")
    if (path / "adapter_config.json").is_file():
        import json

        from peft import PeftModel

        base_name = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        base = load_causal_lm(base_name, dtype, trust_remote_code, device=device)
        return PeftModel.from_pretrained(base, str(path)).merge_and_unload().eval()
    return load_causal_lm(str(path), dtype, trust_remote_code, device=device).eval()


@torch.no_grad()
def evaluate_model(model, tokenizer, data: DataSets, eval_cfg, seed: int = 0, log=print) -> dict:
    """{"forget": {...}, "unseen": {...}, "retain": {"ppl"}, ...} for one model."""
    from trainables import metrics
    from trainables.subsets import char_spans_to_token_mask

    model.eval()
    bs = eval_cfg.batch_size
    progress = eval_cfg.progress or sys.stderr.isatty()
    out: dict = {}
    for name, tset in (("forget", data.forget), ("unseen", data.unseen)):
        if tset is None:
            continue
        ids, mask = tset.input_ids, tset.attention_mask
        row = {"ma": metrics.memorization_accuracy(model, ids, mask, batch_size=bs)}
        if tset.spans is not None and tset.offsets is not None:
            private = char_spans_to_token_mask(tset.offsets, mask, [[s[:2] for s in r] for r in tset.spans])
            row["ma_private"] = metrics.memorization_accuracy(model, ids, mask, position_mask=private, batch_size=bs)
        el = metrics.extraction_likelihood(model, ids, list(eval_cfg.el_n), mask,
                                           prefix_stride=eval_cfg.prefix_stride, batch_size=bs,
                                           progress=progress)
        row.update({f"el{n}": float(v) for n, v in el.items()})
        row["ppl"] = metrics.perplexity(model, ids, mask, batch_size=bs)
        out[name] = row
    if data.heldout is not None:
        ppl = metrics.perplexity(model, data.heldout.input_ids, data.heldout.attention_mask, batch_size=bs)
        out["retain"] = {"ppl": ppl}
        out["ppl"] = ppl
    if eval_cfg.mia and data.unseen is not None:
        mia = metrics.mia_auc(model, data.forget.input_ids, data.forget.attention_mask,
                              data.unseen.input_ids, data.unseen.attention_mask, batch_size=bs)
        out["mia_auc"] = float(mia["loss"])
        out["mia_auc_min_k"] = float(mia["min_k"])
    if eval_cfg.mauve.enabled and data.prompts:
        out.update(generation_quality(model, tokenizer, data.prompts, eval_cfg, seed))
    return out


def split_passages(tokenizer, passages: list[str], prompt_tokens: int, new_tokens: int
                   ) -> tuple[list[str], list[str]]:
    """Cut each held-out passage into a prompt (its first prompt_tokens tokens) and the true
    continuation (the next new_tokens); passages too short for both are skipped."""
    prompts, truths = [], []
    for text in passages:
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        offsets = enc["offset_mapping"]
        if len(offsets) < prompt_tokens + new_tokens:
            continue
        cut = offsets[prompt_tokens][0]
        end = offsets[prompt_tokens + new_tokens - 1][1]
        prompts.append(text[:cut])
        truths.append(text[cut:end])
    return prompts, truths


def generation_quality(model, tokenizer, passages: list[str], eval_cfg, seed: int) -> dict:
    """MAUVE of the model's continuations vs the true ones (with its sample count), and rep-n."""
    from trainables import metrics

    mc = eval_cfg.mauve
    prompts, truths = split_passages(tokenizer, passages[:mc.max_prompts], mc.prompt_tokens, mc.new_tokens)
    if len(prompts) < 2:
        raise InputError(f"data.prompts: only {len(prompts)} passages hold {mc.prompt_tokens} + {mc.new_tokens} "
                         "tokens; lower eval.mauve.prompt_tokens / new_tokens")
    result = metrics.generation_quality(model, tokenizer, prompts, truths, max_new_tokens=mc.new_tokens,
                                        featurizer=mc.featurizer, do_sample=mc.do_sample, seed=seed,
                                        batch_size=eval_cfg.batch_size, progress=eval_cfg.progress or sys.stderr.isatty())
    return {"mauve": float(result["mauve"]), "mauve_samples": int(result["samples"]),
            **{k: float(result[k]) for k in ("rep2", "rep3", "rep4")}}
