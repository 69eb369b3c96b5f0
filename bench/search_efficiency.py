"""Search efficiency: Optuna TPE / NSGA-II vs random search on a synthetic sweep.

Run by hand (not in CI):

    python bench/search_efficiency.py [--trials 40] [--seeds 10]

The synthetic objective has the same interface as the real UnDIAL sweep:

    gamma      loguniform [1, 50]     logit-adjustment strength
    lr         loguniform [1e-5, 1e-3]
    policy     choice {all, entities, reference, spans}   subset policy
    lora_rank  choice {0, 4, 8, 16}   0 = full fine-tuning

and returns el3 (forget-set extraction likelihood, minimised) and mauve
(retain-set fluency, maximised), both in [0, 1]. It is a noisy analytic
surface built to behave like the real demo:

* Forgetting needs enough update: strength grows with log(gamma * lr) and
  with the LoRA rank (full fine-tuning strongest, rank 4 weakest), with a
  policy-dependent threshold; and gamma below ~6 barely changes the
  distilled target, so it forgets little whatever the lr.
* Forgetting costs fluency: each policy hurts mauve in proportion to how
  much it forgets ("all" touches every token and costs most, "entities"
  and "spans" a lot; "reference" spares tokens the reference model already
  predicts and costs little).
* Too hot is bad: lr above ~2.5e-4 or gamma above ~16 degrades mauve
  whatever else is set.

So larger gamma*lr lowers el3 but hurts mauve (a real trade-off), and only
a small region gives both low el3 and high mauve: in a dense noise-free
sample, el3 < 0.15 with mauve > 0.75 occurs in 0.6% of the space, all of it
policy "reference", gamma in about [10, 18], lr in about [5e-5, 3e-4].

Hypervolume uses orchestrator.pareto with the fixed reference el3 = 1.0,
mauve = 0.0 (the worst possible values), over the observed (noisy) values,
which is what a sweep reports (each front is checked against Optuna's own,
Study.best_trials). NSGA-II runs with population_size 10 so that
a 40-trial budget gives it 4 generations (with its default of 50 it would
be random search). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.pareto import Objective, hypervolume, pareto_front  # noqa: E402

OBJECTIVES = [Objective("el3", "min"), Objective("mauve", "max")]
REFERENCE = {"el3": 1.0, "mauve": 0.0}

# policy: (log10(gamma*lr) threshold for forgetting, mauve cost of full forgetting, base mauve)
POLICIES = {
    "all":       (-3.40, 0.85, 0.86),
    "entities":  (-3.10, 0.60, 0.90),
    "reference": (-3.25, 0.12, 0.93),
    "spans":     (-3.00, 0.65, 0.88),
}
# lora_rank: (extra log10 update strength, multiplier on the mauve cost)
RANKS = {0: (0.25, 1.30), 4: (-0.30, 0.85), 8: (0.0, 1.0), 16: (0.10, 1.05)}
NOISE = 0.02


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def synthetic_sweep(gamma: float, lr: float, policy: str, lora_rank: int,
                    rng: np.random.Generator, noise: float = NOISE) -> dict[str, float]:
    """One synthetic trial: {"el3": ..., "mauve": ...}, both clipped to [0, 1]."""
    threshold, cost, base = POLICIES[policy]
    boost, cost_mult = RANKS[lora_rank]
    lg, ll = math.log10(gamma), math.log10(lr)
    update = _sigmoid((lg + ll + boost - threshold) / 0.2)       # enough gamma*lr to move the model
    target = _sigmoid((lg - math.log10(6.0)) / 0.12)             # gamma big enough to change the target
    forget = update * target                                      # in [0, 1]
    el3 = 0.04 + 0.86 * (1.0 - forget)
    too_hot_lr = math.exp(-max(0.0, ll - math.log10(2.5e-4)) ** 2 / (2 * 0.15 ** 2))
    too_hot_gamma = math.exp(-max(0.0, lg - math.log10(16.0)) ** 2 / (2 * 0.12 ** 2))
    mauve = base * too_hot_lr * too_hot_gamma * (1.0 - min(1.0, cost * cost_mult) * forget)
    if noise:
        el3 += rng.normal(0.0, noise)
        mauve += rng.normal(0.0, noise)
    return {"el3": float(np.clip(el3, 0.0, 1.0)), "mauve": float(np.clip(mauve, 0.0, 1.0))}


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=10)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(name)


def run_one(sampler_name: str, seed: int, n_trials: int) -> tuple[float, list[dict]]:
    """One study; returns (hypervolume, rows). The noise stream depends only on
    the seed, so every sampler sees the same noise sequence."""
    rng = np.random.default_rng(10_000 + seed)
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=make_sampler(sampler_name, seed))

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        out = synthetic_sweep(
            gamma=trial.suggest_float("gamma", 1.0, 50.0, log=True),
            lr=trial.suggest_float("lr", 1e-5, 1e-3, log=True),
            policy=trial.suggest_categorical("policy", list(POLICIES)),
            lora_rank=trial.suggest_categorical("lora_rank", list(RANKS)),
            rng=rng,
        )
        return out["el3"], out["mauve"]

    study.optimize(objective, n_trials=n_trials)
    rows = [{"trial_id": t.number, "params": t.params, "el3": t.values[0], "mauve": t.values[1]}
            for t in study.trials if t.values is not None]
    # the front the hypervolume counts is Optuna's own (Study.best_trials)
    ours = {rows[i]["trial_id"] for i in pareto_front(rows, OBJECTIVES)}
    theirs = {t.number for t in study.best_trials}
    if ours != theirs:
        raise AssertionError(f"{sampler_name} seed {seed}: Pareto front {sorted(ours)} != Optuna's {sorted(theirs)}")
    return hypervolume(rows, OBJECTIVES, REFERENCE), rows


def _optimum_hv(samples: int = 100_000) -> float:
    """Noise-free hypervolume of a dense random sample: a near-upper bound, for scale."""
    rng = np.random.default_rng(0)
    gammas = 10 ** rng.uniform(0, math.log10(50), samples)
    lrs = 10 ** rng.uniform(-5, -3, samples)
    pols = rng.choice(list(POLICIES), samples)
    ranks = rng.choice(list(RANKS), samples)
    rows = [synthetic_sweep(float(g), float(lr), str(p), int(r), rng, noise=0.0)
            for g, lr, p, r in zip(gammas, lrs, pols, ranks)]
    return hypervolume(rows, OBJECTIVES, REFERENCE)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--no-optimum", action="store_true", help="skip the dense-sample reference HV")
    args = ap.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    results: dict[str, list[float]] = {}
    print(f"{args.trials} trials per study, seeds {seeds[0]}..{seeds[-1]}, "
          f"reference el3={REFERENCE['el3']}, mauve={REFERENCE['mauve']}")
    if not args.no_optimum:
        print(f"dense-sample (noise-free, 100k points) hypervolume: {_optimum_hv():.4f}")
    print(f"{'sampler':<8} {'HV mean':>8} {'± std':>7} {'min':>7} {'max':>7} {'s/study':>8}")
    for name in ("tpe", "nsga2", "random"):
        hvs, t0 = [], time.perf_counter()
        for s in seeds:
            hv, _ = run_one(name, s, args.trials)
            hvs.append(hv)
        dt = (time.perf_counter() - t0) / len(seeds)
        results[name] = hvs
        sd = statistics.stdev(hvs) if len(hvs) > 1 else 0.0
        print(f"{name:<8} {statistics.fmean(hvs):8.4f} {sd:7.4f} {min(hvs):7.4f} {max(hvs):7.4f} {dt:8.2f}")
    m = {k: statistics.fmean(v) for k, v in results.items()}
    wins = sum(a > b for a, b in zip(results["tpe"], results["random"]))
    print(f"TPE beats random on {wins} of {len(seeds)} seeds (same seed, same noise stream)")
    print(json.dumps({
        "hv_ratio": round(m["tpe"] / m["random"], 4) if m["random"] > 0 else None,
        "hv_tpe": round(m["tpe"], 4),
        "hv_nsga2": round(m["nsga2"], 4),
        "hv_random": round(m["random"], 4),
        "seeds": len(seeds),
        "trials": args.trials,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
