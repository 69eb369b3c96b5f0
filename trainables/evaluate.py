"""The evaluation suite composed from trainables.metrics: what `undial unlearn` reports for
the original and the unlearned model, what a sweep trial reports, what `undial eval` prints.

It runs in the workers, on the model where training left it (its device, its strategy's
wrapping). The sequences are cut into batches of eval.batch_size; batch k is computed by
rank k mod W and the per-sequence values are gathered in order, so W workers give exactly
the one-process figures (each batch is computed the same way wherever it runs). Sharded
strategies (FSDP2, ZeRO-3) need every rank in every forward: there each rank computes every
batch (`Shard.replicated`). MAUVE prompts are split the same way, each batch of prompts
sampled with a seed of its own, so the worker count does not change a prompt's continuation.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from trainables.data import DataSets
from trainables.errors import InputError


def load_result_model(path: str | Path, dtype: str = "fp32", device="cpu", trust_remote_code: bool = False,
                      revision: str | None = None, allow_pickle_weights: bool = False, key: str = "--model"):
    """A saved result: a full model folder, or a PEFT adapter folder (merged onto its base), or a
    Hub id. `revision` / `allow_pickle_weights`: model.revision / model.allow_pickle_weights, for
    the base an adapter names (the original model) and for a Hub id."""
    from trainables.models import _unreadable_errors, load_causal_lm
    from trainables.preflight import check_weights_folder, looks_local

    name = str(path)
    path = Path(path)
    if not path.exists():
        if looks_local(name):
            raise InputError(f"{key}: {name} does not exist")
        return load_causal_lm(name, dtype, trust_remote_code, revision, device=device,
                              allow_pickle_weights=allow_pickle_weights, key=key).eval()
    if (path / "adapter_config.json").is_file():
        import json

        from peft import PeftModel

        try:
            base_name = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            raise InputError(f"{key}: {path / 'adapter_config.json'} is not a readable adapter config "
                             f"({str(exc).splitlines()[0]})") from None
        if not isinstance(base_name, str) or not base_name:
            raise InputError(f"{key}: {path / 'adapter_config.json'} names no base_model_name_or_path")
        check_weights_folder(path, key, allow_pickle_weights)
        base = load_causal_lm(base_name, dtype, trust_remote_code, revision, device=device,
                              allow_pickle_weights=allow_pickle_weights, key=f"{key} (the adapter's base model)")
        try:
            return PeftModel.from_pretrained(base, str(path)).merge_and_unload().eval()
        except _unreadable_errors() as exc:
            raise InputError(f"{key}: cannot load the adapter in {path}: {str(exc).strip().splitlines()[0]}") from None
    return load_causal_lm(name, dtype, trust_remote_code, revision, device=device,
                          allow_pickle_weights=allow_pickle_weights, key=key).eval()


class Shard:
    """Which evaluation batches this rank computes, and the gather that puts them back."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        self.rank, self.world_size = rank, world_size

    @classmethod
    def replicated(cls) -> "Shard":
        return cls(0, 1)

    def indices(self, n: int, batch_size: int) -> list[int]:
        """The sequence indices of this rank's batches, in order."""
        return [i for k, s in enumerate(range(0, n, batch_size)) if k % self.world_size == self.rank
                for i in range(s, min(s + batch_size, n))]

    def batch_starts(self, n: int, batch_size: int) -> list[int]:
        return [s for k, s in enumerate(range(0, n, batch_size)) if k % self.world_size == self.rank]

    def gather(self, idx: list[int], values) -> list:
        """Per-sequence values of this rank (aligned with idx) -> every sequence's, in order."""
        values = list(values)
        if self.world_size == 1:
            return values
        import torch.distributed as dist

        pieces: list = [None] * self.world_size
        dist.all_gather_object(pieces, (list(idx), values))
        out: dict[int, object] = {}
        for piece_idx, piece_values in pieces:
            out.update(zip(piece_idx, piece_values))
        return [out[i] for i in sorted(out)]


def _nanmean(values) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def _sequence_stats(model, tset, eval_cfg, idx: list[int], progress: bool) -> dict[str, list]:
    """Per-sequence MA (all tokens and private fields), EL_n, NLL, token counts and the
    membership scores of the sequences `idx` of one set."""
    from trainables import metrics
    from trainables.subsets import char_spans_to_token_mask

    has_spans = tset.spans is not None and tset.offsets is not None
    names = ["ma", "nll", "tokens", "mia_loss", "mia_min_k"] + (["ma_private"] if has_spans else [])
    out: dict[str, list] = {name: [] for name in names}
    out.update({f"el{n}": [] for n in eval_cfg.el_n})
    if not idx:
        return out
    bs = eval_cfg.batch_size
    ids, mask = tset.input_ids[idx], tset.attention_mask[idx]
    private = (char_spans_to_token_mask(tset.offsets[idx], mask, [[s[:2] for s in tset.spans[i]] for i in idx])
               if has_spans else None)
    if getattr(tset, "answer_mask", None) is not None:  # Q&A: answer tokens only
        from trainables import qa

        scores = qa.answer_sequence_scores(model, ids, mask, tset.answer_mask[idx], position_mask=private,
                                           batch_size=bs)
    else:
        scores = metrics.sequence_scores(model, ids, mask, position_mask=private, batch_size=bs)
    out.update({name: scores[name].tolist() for name in names})
    for n, values in _extraction_likelihood(model, tset, idx, list(eval_cfg.el_n), eval_cfg, progress).items():
        out[f"el{n}"] = [float(v) for v in values]
    return out


def _extraction_likelihood(model, tset, idx: list[int], el_n: list[int], eval_cfg, progress: bool = False) -> dict:
    """Per-sequence EL_n of the sequences `idx` of one set, {n: values}; a Q&A set on its answer
    tokens, prompted with the question."""
    from trainables import metrics

    ids, mask = tset.input_ids[idx], tset.attention_mask[idx]
    if getattr(tset, "answer_mask", None) is not None:
        from trainables import qa

        rows = None if tset.rows is None else [tset.rows[i] for i in idx]
        return qa.answer_extraction_likelihood(model, ids, mask, tset.answer_mask[idx], el_n, eval_cfg.prefix_stride,
                                               eval_cfg.batch_size, progress, rows=rows)
    return metrics.extraction_likelihood_per_sequence(model, ids, el_n, mask, prefix_stride=eval_cfg.prefix_stride,
                                                      batch_size=eval_cfg.batch_size, progress=progress)


def _covered_texts(tset, idx: list[int]) -> list[str] | None:
    """Each row's text up to the end of its last kept token (truncation drops the rest)."""
    if tset.texts is None:
        return None
    if tset.offsets is None:
        return [tset.texts[i] for i in idx]
    ends = (tset.offsets[idx, :, 1] * tset.attention_mask[idx]).max(1).values
    return [tset.texts[i][:int(e)] for i, e in zip(idx, ends)]


def _attack_stats(model, tset, eval_cfg, idx: list[int]) -> dict[str, list]:
    """Per-sequence membership scores ("attack.<name>") of the sequences `idx` of one set, for
    eval.mia_attacks (the logit ones from one forward per batch; loss always, `ref` needs it)."""
    from trainables import attacks

    wanted = eval_cfg.attacks()
    logit = ["loss"] + [a for a in wanted if a in ("zlib", "min_k", "min_k_pp")]
    if tset.texts is None:
        logit = [a for a in logit if a != "zlib"]  # token-id data: no text to compress, zlib absent
    names = logit + (["grad_norm"] if "grad_norm" in wanted else [])
    out: dict[str, list] = {f"attack.{a}": [] for a in names}
    if not idx:
        return out
    ids, mask = tset.input_ids[idx], tset.attention_mask[idx]
    answers = getattr(tset, "answer_mask", None)
    answers = None if answers is None else answers[idx]
    scores = attacks.attack_scores(model, ids, mask, logit, k=eval_cfg.mia_k, texts=_covered_texts(tset, idx),
                                   batch_size=eval_cfg.batch_size, token_mask=answers)
    if "grad_norm" in names:
        scores["grad_norm"] = attacks.grad_norm_scores(model, ids, mask, token_mask=answers)
    return {f"attack.{a}": scores[a].tolist() for a in names}


@torch.no_grad()
def evaluate_model(model, tokenizer, data: DataSets, eval_cfg, seed: int = 0, shard: Shard | None = None,
                   device=None, log=print, retain: dict | None = None, _self_reference: bool = False,
                   _scores_out: dict | None = None) -> dict:
    """{"forget": {...}, "unseen": {...}, "retain": {"ppl"}, "mia_auc", "mia": {attack: AUC},
    "mauve", ...} for one model; every rank of `shard` calls it and gets the whole report.
    `retain`: the retain model's section (`retain_report`): adds the `ref` attack, `privleak`
    per attack and `forget_quality`; without it they are absent."""
    from trainables import metrics

    shard = shard or Shard.replicated()
    model.eval()
    bs = eval_cfg.batch_size
    progress = (eval_cfg.progress or sys.stderr.isatty()) and shard.rank == 0
    out: dict = {}
    per_set: dict[str, dict[str, list]] = {}
    for name, tset in (("forget", data.forget), ("unseen", data.unseen)):
        if tset is None:
            continue
        idx = shard.indices(len(tset), bs)
        stats = {k: shard.gather(idx, v) for k, v in _sequence_stats(model, tset, eval_cfg, idx, progress).items()}
        if eval_cfg.mia:
            stats.update({k: shard.gather(idx, v) for k, v in _attack_stats(model, tset, eval_cfg, idx).items()})
        per_set[name] = stats
        row = {"ma": _nanmean(stats["ma"])}
        if "ma_private" in stats:
            row["ma_private"] = _nanmean(stats["ma_private"])
        row.update({f"el{n}": float(np.mean(stats[f"el{n}"])) for n in eval_cfg.el_n})
        row["ppl"] = metrics.perplexity_from(np.asarray(stats["nll"]), np.asarray(stats["tokens"]))
        out[name] = row
    if data.heldout is not None:
        idx = shard.indices(len(data.heldout), bs)
        nll, tokens = (metrics.sequence_nll(model, data.heldout.input_ids[idx], data.heldout.attention_mask[idx],
                                            batch_size=bs) if idx else ([], []))
        ppl = metrics.perplexity_from(np.asarray(shard.gather(idx, list(nll))),
                                      np.asarray(shard.gather(idx, list(tokens))))
        out["retain"] = {"ppl": ppl}
        out["ppl"] = ppl
    if eval_cfg.mia and "unseen" in per_set:
        f, u = per_set["forget"], per_set["unseen"]
        out["mia_auc"] = metrics.roc_auc(f["mia_loss"], u["mia_loss"])
        out["mia_auc_min_k"] = metrics.roc_auc(f["mia_min_k"], u["mia_min_k"])
    out.update(_privacy(per_set, eval_cfg, retain, _self_reference))
    if _scores_out is not None:  # the retain model's per-sequence scores (retain_report)
        _scores_out.update(per_set)
    if eval_cfg.mauve.enabled and data.prompts:
        out.update(generation_quality(model, tokenizer, data.prompts, eval_cfg, seed, shard, device))
    return out


def _privacy(per_set: dict, eval_cfg, retain: dict | None, self_reference: bool) -> dict:
    """mia (AUC per attack), privleak / privleak_abs per attack and forget_quality, from the
    per-sequence scores of this model (and of the retain model's section)."""
    from trainables import attacks, metrics

    out: dict = {}
    forget = per_set.get("forget")
    if forget is None:
        return out
    wanted = eval_cfg.attacks()
    if "ref" in wanted and "attack.loss" in forget and (self_reference or retain is not None):
        for name, stats in per_set.items():
            # the retain model against itself: every score 0, AUC 0.5 (it is its own calibration)
            reference = stats["attack.loss"] if self_reference else retain["scores"][name]["loss"]
            stats["attack.ref"] = attacks.ref_scores(stats["attack.loss"], reference).tolist()
    if eval_cfg.mia and "unseen" in per_set:
        u = per_set["unseen"]
        out["mia"] = {a: metrics.roc_auc(forget[f"attack.{a}"], u[f"attack.{a}"])
                      for a in wanted if f"attack.{a}" in forget and f"attack.{a}" in u}
        if retain is not None and retain.get("mia"):
            leak = {a: attacks.privleak(auc, retain["mia"][a]) for a, auc in out["mia"].items() if a in retain["mia"]}
            out["privleak"] = leak
            out["privleak_abs"] = {a: abs(v) for a, v in leak.items()}
    if retain is not None:
        losses = np.asarray(forget["nll"], np.float64) / np.asarray(forget["tokens"], np.float64)
        out["forget_quality"] = attacks.forget_quality(losses, retain["forget_loss"])
    return out


def _retain_matches(section: dict | None, eval_cfg, data: DataSets) -> bool:
    """Whether a retain section (e.g. the sweep's, measured once) fits this evaluation."""
    if not isinstance(section, dict) or section.get("model") != eval_cfg.retain_model:
        return False
    if section.get("mia_k") != eval_cfg.mia_k:
        return False
    if not set(eval_cfg.attacks()) - {"ref"} <= set(section.get("attacks", [])):
        return False
    if len(section.get("forget_loss", [])) != len(data.forget):
        return False
    sizes = {"forget": len(data.forget), "unseen": len(data.unseen) if data.unseen is not None else None}
    return not eval_cfg.mia or all(len(section.get("scores", {}).get(name, {}).get("loss", [])) == n
                                   for name, n in sizes.items() if n is not None)


def retain_report(model_cfg, eval_cfg, tokenizer, data: DataSets, shard: Shard | None = None, device=None,
                  log=print) -> dict | None:
    """The retain model's (eval.retain_model: never trained on the forget set) own figures and
    the per-sequence scores later evaluations compare against; None when it is not configured.
    Loaded on `device` beside the model being evaluated, evaluated once, released."""
    import dataclasses
    import gc

    from trainables.models import configured_model

    if not eval_cfg.retain_model:
        return None
    log(f"evaluating the retain model ({eval_cfg.retain_model}) ...")
    model = configured_model(model_cfg, device or "cpu", eval_cfg.retain_model, key="eval.retain_model")
    cfg = dataclasses.replace(eval_cfg, mauve=dataclasses.replace(eval_cfg.mauve, enabled=False))
    scores: dict[str, dict] = {}
    report = evaluate_model(model, tokenizer, data, cfg, shard=shard, device=device, log=log, _self_reference=True,
                            _scores_out=scores)
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    section = {"model": eval_cfg.retain_model, "mia_k": eval_cfg.mia_k, "attacks": eval_cfg.attacks(), **report}
    section["scores"] = {name: {k[len("attack."):]: v for k, v in stats.items() if k.startswith("attack.")}
                         for name, stats in scores.items()}
    forget = scores["forget"]
    section["forget_loss"] = (np.asarray(forget["nll"], np.float64) / np.asarray(forget["tokens"])).tolist()
    return section


def evaluate_original(model, tokenizer, data: DataSets, cfg, seed: int = 0, shard: Shard | None = None,
                      device=None, log=print) -> dict:
    """The original model's report (a run's or a sweep's "before"): with eval.retain_model, the
    retain model is evaluated first (once) and its section travels in the report as
    "retain_model", for the original's and every later evaluation's privacy figures; its
    "evaluation_key" says which settings produced it (`evaluation_key`)."""
    retain = retain_report(cfg.model, cfg.eval, tokenizer, data, shard, device, log)
    report = evaluate_model(model, tokenizer, data, cfg.eval, seed=seed, shard=shard, device=device, log=log,
                            retain=retain)
    if retain is not None:
        report["retain_model"] = retain
    report["evaluation_key"] = evaluation_key(cfg, seed)
    return report


# What the original's report holds beside the figures a final evaluation reports (its
# relearn_retain comes only with a relearning attack, which original_as_final never reuses).
_ORIGINAL_ONLY = ("retain_model", "evaluation_key")


def evaluation_key(cfg, seed: int) -> str:
    """A digest of what a model's whole evaluation depends on besides its weights: the model,
    data, eval and scaling sections (less the workers' resources) and the sampling seed. Equal
    weights and equal keys give the same report."""
    import hashlib
    import json

    plain = cfg.to_dict()
    parts = {name: plain[name] for name in ("model", "data", "eval", "scaling")}
    # The CPUs a worker holds set its threads, not its figures (at most the float summation
    # order: the demo's report is identical on one thread and two). A sweep evaluates its
    # original on the idle CPUs of every trial slot and reuses it for trials that kept step 0.
    parts["scaling"] = {k: v for k, v in parts["scaling"].items() if k != "resources_per_worker"}
    return hashlib.sha256(json.dumps({**parts, "seed": seed}, sort_keys=True, default=str).encode()).hexdigest()[:16]


def original_as_final(original: dict | None, cfg, seed: int) -> dict | None:
    """The final report of a run that kept step 0 (the original weights): the original's own
    report, when it was measured as this run would measure (the same `evaluation_key`: a sweep's
    original is evaluated once with the base config, a trial may change eval settings) and no
    relearning attack is asked for (it trains a copy the way this run's settings say); else None."""
    if not original or original.get("evaluation_key") != evaluation_key(cfg, seed) or cfg.eval.relearn.enabled:
        return None
    return {k: v for k, v in original.items() if k not in _ORIGINAL_ONLY}


def retain_for(cfg, original: dict | None, tokenizer, data: DataSets, shard: Shard | None = None, device=None,
               log=print) -> dict | None:
    """The retain section a final evaluation compares against: the original report's when it fits
    this config and data, else measured now (None without eval.retain_model)."""
    if not cfg.eval.retain_model:
        return None
    section = (original or {}).get("retain_model")
    if _retain_matches(section, cfg.eval, data):
        return section
    return retain_report(cfg.model, cfg.eval, tokenizer, data, shard, device, log)


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


def generation_quality(model, tokenizer, passages: list[str], eval_cfg, seed: int, shard: Shard | None = None,
                       device=None) -> dict:
    """MAUVE of the model's continuations vs the true ones (with its sample count), and rep-n.
    Each rank generates and featurises its batches of prompts (eval.mauve.batch_size a batch;
    the batch at start s of draw d sampled with seed + d * prompts + s); the features are
    gathered and MAUVE computed once per draw.
    With eval.mauve.draws > 1, `mauve` / `mauve_star` are the draws' mean, `mauve_sd` their
    standard deviation, rep-n over every draw's continuations."""
    from trainables import metrics

    shard = shard or Shard.replicated()
    mc = eval_cfg.mauve
    prompts, truths = split_passages(tokenizer, passages[:mc.max_prompts], mc.prompt_tokens, mc.new_tokens)
    if len(prompts) < 2:
        raise InputError(f"data.prompts: only {len(prompts)} passages hold {mc.prompt_tokens} + {mc.new_tokens} "
                         "tokens; lower eval.mauve.prompt_tokens / new_tokens")
    bs, gen_bs = eval_cfg.batch_size, mc.batch_size
    feat_device = str(device) if device is not None else None
    starts = shard.batch_starts(len(prompts), gen_bs)
    idx = [i for start in starts for i in range(start, min(start + gen_bs, len(prompts)))]
    p = None
    scores, stars, all_gens, samples = [], [], [], 0
    for draw in range(mc.draws):
        draw_seed = seed + draw * len(prompts)  # every (draw, batch) its own stream
        gens = []
        for start in starts:
            batch = prompts[start:start + gen_bs]
            gens += metrics.generate_continuations(model, tokenizer, batch, max_new_tokens=mc.new_tokens,
                                                   do_sample=mc.do_sample, seed=draw_seed + start,
                                                   batch_size=len(batch))
        q_local = [t if t.strip() else " " for t in gens]  # an empty generation still counts as a sample
        q_feat = (metrics.featurize(q_local, mc.featurizer, batch_size=bs, device=feat_device)
                  if idx else np.zeros((0, 0), np.float32))
        all_gens += shard.gather(idx, gens)
        q = np.stack(shard.gather(idx, list(q_feat)))
        if p is None:
            p = _human_features(truths, idx, mc.featurizer, bs, feat_device, shard)
        result = metrics.mauve_from_features(p, q, seed=draw_seed, num_buckets=mc.num_buckets or "auto",
                                             kmeans_seeds=mc.kmeans_seeds)
        scores.append(float(result["mauve"]))
        stars.append(float(result["mauve_star"]))
        samples = int(result["samples"])
    out = {"mauve": float(np.mean(scores)), "mauve_star": float(np.mean(stars)), "mauve_samples": samples,
           **{k: float(v) for k, v in metrics.repetition(all_gens).items()}}
    if mc.draws > 1:
        out.update(mauve_sd=float(np.std(scores, ddof=1)), mauve_draws=mc.draws)
    return out


def _human_features(truths: list[str], idx: list[int], featurizer: str, batch_size: int, device,
                    shard: Shard) -> np.ndarray:
    """The true continuations' features: from the node's cache when every rank has them (ranks
    on different nodes may not: all decide together), else featurised across the ranks (each
    its batches) and cached for the next evaluation."""
    from trainables import feature_cache, metrics

    cached = feature_cache.load_cached(featurizer, truths)
    if all(shard.gather([shard.rank], [cached is not None])):
        return cached
    local = (metrics.featurize([truths[i] for i in idx], featurizer, batch_size=batch_size, device=device)
             if idx else np.zeros((0, 0), np.float32))
    p = np.stack(shard.gather(idx, list(local)))
    if cached is None:
        feature_cache.store(featurizer, truths, p)
    return p


@torch.no_grad()
def watch_metrics(model, data: DataSets, eval_cfg, shard: Shard | None = None, el_n: int | None = None,
                  el_when_ma_below: float | None = None) -> dict:
    """What the training loop watches every k steps: forget MA and held-out perplexity (and
    forget EL_n for the threshold stopping rule), named as in the full report. With
    `el_when_ma_below`, EL_n only when forget MA is already below it: the stopping rule needs
    both under their thresholds, and on a model that has begun to forget EL_n's greedy
    generations cost about twice MA and perplexity together."""
    from trainables import metrics

    shard = shard or Shard.replicated()
    bs = eval_cfg.batch_size
    was_training = model.training
    model.eval()
    forget = data.forget
    idx = shard.indices(len(forget), bs)
    ids, mask = forget.input_ids[idx], forget.attention_mask[idx]
    if getattr(forget, "answer_mask", None) is not None:  # Q&A: answer tokens only, as the whole evaluation
        from trainables import qa

        ma = (qa.answer_sequence_scores(model, ids, mask, forget.answer_mask[idx], batch_size=bs)["ma"].tolist()
              if idx else [])
    else:
        ma = metrics.memorization_accuracy_per_sequence(model, ids, mask, batch_size=bs).tolist() if idx else []
    out = {"forget.ma": _nanmean(shard.gather(idx, ma))}
    if data.heldout is not None:
        hidx = shard.indices(len(data.heldout), bs)
        nll, tokens = (metrics.sequence_nll(model, data.heldout.input_ids[hidx], data.heldout.attention_mask[hidx],
                                            batch_size=bs) if hidx else ([], []))
        out["retain.ppl"] = metrics.perplexity_from(np.asarray(shard.gather(hidx, list(nll))),
                                                    np.asarray(shard.gather(hidx, list(tokens))))
    if el_n is not None and (el_when_ma_below is None or out["forget.ma"] < el_when_ma_below):
        el = _extraction_likelihood(model, forget, idx, [el_n], eval_cfg)[el_n] if idx else []
        out[f"forget.el{el_n}"] = float(np.mean(shard.gather(idx, [float(v) for v in el])))
    model.train(was_training)
    return out


def watch_from_report(report: dict, el_n: int | None = None) -> dict:
    """The watched figures of a model whose whole evaluation is at hand: the same numbers
    `watch_metrics` computes (the same per-sequence functions over the same batches)."""
    out = {"forget.ma": report["forget"]["ma"]}
    if "retain" in report:
        out["retain.ppl"] = report["retain"]["ppl"]
    if el_n is not None:
        out[f"forget.el{el_n}"] = report["forget"][f"el{el_n}"]
    return out
