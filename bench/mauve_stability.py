"""Does MAUVE tell models apart at the demo sweep's setting? The original demo model and a copy
whose held-out perplexity is ~1.3x its own (Gaussian weight noise, its scale found by bisection),
each scored over several sampling seeds through the evaluation's own code path
(trainables.evaluate.generation_quality: the human side featurised once and cached).

    python bench/mauve_stability.py [--demo-dir DIR] [--seeds 5] [--max-prompts 1000] [--buckets N]
                                    [--model RESULT_DIR ...]

--model adds saved models (an `undial unlearn` result's model/, a sweep trial's) scored the same
way: an unlearned model's seed spread need not be the original's. Prints one row per model
(mean, standard deviation over seeds, the gap to the original in standard deviations) for
`mauve` and `mauve_star`, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def add_weight_noise(model, scale: float, seed: int = 0):
    """A copy of model with N(0, (scale * std of each weight)^2) added to every weight matrix."""
    import torch

    noisy = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in noisy.parameters():
            if p.dim() >= 2:
                p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
    return noisy


def heldout_ppl(model, heldout) -> float:
    from trainables import metrics

    return metrics.perplexity(model, heldout.input_ids, heldout.attention_mask, batch_size=64)


def copy_at_ppl_ratio(model, heldout, target: float, seed: int = 0, steps: int = 12):
    """Bisect the noise scale so the copy's held-out perplexity is target x the model's."""
    base = heldout_ppl(model, heldout)
    lo, hi = 0.0, 1.0
    best = (model, 1.0)
    for _ in range(steps):
        mid = (lo + hi) / 2
        noisy = add_weight_noise(model, mid, seed)
        ratio = heldout_ppl(noisy, heldout) / base
        best = min(best, (noisy, ratio), key=lambda b: abs(b[1] - target))
        lo, hi = (mid, hi) if ratio < target else (lo, mid)
    return best


def scores(model, tokenizer, prompts, eval_cfg, seeds: list[int]) -> dict[str, list[float]]:
    from trainables.evaluate import generation_quality

    out: dict[str, list[float]] = {"mauve": [], "mauve_star": [], "seconds": []}
    for seed in seeds:
        start = time.perf_counter()
        got = generation_quality(model, tokenizer, prompts, eval_cfg, seed)
        out["seconds"].append(time.perf_counter() - start)
        out["mauve"].append(got["mauve"])
        out["mauve_star"].append(got["mauve_star"])
        out["samples"] = got["mauve_samples"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", type=Path, default=None, help="default: the built full demo")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-prompts", type=int, default=1000)
    parser.add_argument("--buckets", type=int, default=None, help="k-means buckets (default: samples / 10)")
    parser.add_argument("--ppl-ratio", type=float, default=1.3)
    parser.add_argument("--model", type=Path, action="append", default=[],
                        help="a saved model folder to score as well (repeatable)")
    args = parser.parse_args(argv)

    import warnings

    from trainables.config import UnlearnConfig, from_dict
    from trainables.data import load_datasets
    from trainables.demo import ensure_demo
    from trainables.errors import InputError
    from trainables.evaluate import load_result_model
    from trainables.metrics import SmallSampleWarning
    from trainables.models import configured_tokenizer

    warnings.simplefilter("ignore", SmallSampleWarning)
    demo = args.demo_dir or ensure_demo()
    cfg = from_dict(UnlearnConfig, {
        "model": {"name_or_path": str(demo / "model")},
        "data": {k: str(demo / "data" / f"{k}.jsonl") for k in ("forget", "unseen", "retain", "heldout", "prompts")},
        "eval": {"mauve": {"max_prompts": args.max_prompts, "do_sample": True, "num_buckets": args.buckets}},
    })
    tokenizer = configured_tokenizer(cfg.model)
    data = load_datasets(cfg.data, tokenizer, need_retain=False)
    model = load_result_model(demo / "model")
    try:  # a wrong --model is refused before minutes of scoring, not after
        others = [load_result_model(path) for path in args.model]
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    noisy, ratio = copy_at_ppl_ratio(model, data.heldout, args.ppl_ratio)
    seeds = list(range(args.seeds))
    rows = {"original": scores(model, tokenizer, data.prompts, cfg.eval, seeds),
            f"noisy (ppl x{ratio:.2f})": scores(noisy, tokenizer, data.prompts, cfg.eval, seeds)}
    base_ppl = heldout_ppl(model, data.heldout)
    for i, other in enumerate(others, start=1):
        rows[f"model{i} (ppl x{heldout_ppl(other, data.heldout) / base_ppl:.2f})"] = scores(
            other, tokenizer, data.prompts, cfg.eval, seeds)
    base = rows["original"]
    print(f"{'model':<22} {'metric':<11} {'mean':>7} {'sd':>7} {'gap/sd':>7}  samples")
    summary = {"ppl_ratio": ratio, "seeds": args.seeds, "max_prompts": args.max_prompts, "buckets": args.buckets}
    for name, got in rows.items():
        for metric in ("mauve", "mauve_star"):
            mean, sd = statistics.mean(got[metric]), statistics.stdev(got[metric])
            sd0 = statistics.stdev(base[metric])
            gap = (statistics.mean(base[metric]) - mean) / max(sd0, sd, 1e-9)
            print(f"{name:<22} {metric:<11} {mean:7.3f} {sd:7.3f} {gap:7.1f}  {got['samples']}")
            summary[f"{name.split()[0]}.{metric}"] = {"values": got[metric], "mean": mean, "sd": sd, "gap_sd": gap}
        summary[f"{name.split()[0]}.seconds"] = statistics.median(got["seconds"])
    summary["samples"] = base["samples"]
    summary["models"] = {f"model{i}": str(p) for i, p in enumerate(args.model, start=1)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
