"""The one table of metric names.

Every measure has one name: its path in an evaluation report (`forget.ma`,
`retain.ppl`, `mauve`, `forget.el3`), which is also the key the training loop
logs per step, the key a search space's objectives and constraints name and the
column the Pareto files use. A few short aliases (`el3`, `ma`, `ppl`) are accepted
where users type names; `*_ratio` is the value after unlearning over the original's.
Each entry says which way is better for unlearning and the bounds it is known to lie
in (the hypervolume reference of a bounded objective is its worst bound). Like EL_n, the
privacy metrics have one entry per membership-inference attack (`privacy_metric`):
`mia.<attack>` (typed `mia_auc.<attack>` too), `privleak.<attack>`, `privleak_abs.<attack>`;
`privleak` alone is MUSE's (Min-K%). docs/privacy.md says what each means.

Pure Python: the config, the sweep, Pareto, tracking and the workers import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Direction = Literal["min", "max"]


@dataclass(frozen=True)
class Metric:
    name: str                     # the report path
    direction: Direction          # better for unlearning: lower ("min") or higher ("max")
    low: float | None = None      # known bounds of the value, None where unbounded
    high: float | None = None
    needs: tuple[str, ...] = ()   # config keys that must be set (truthy) for it to be measured
    description: str = ""

    def worst(self) -> float | None:
        """The worst value the metric can take (a natural hypervolume reference), if bounded."""
        return self.high if self.direction == "min" else self.low


_UNIT = dict(low=0.0, high=1.0)

# The metrics of an evaluation report (trainables.evaluate) and of the training loop's
# in-loop evaluation, by name. EL_n has one entry per n (see `resolve`).
METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("forget.ma", "min", **_UNIT, description="memorisation accuracy on the forget set"),
    Metric("forget.ma_private", "min", **_UNIT, description="MA on the private fields (spans) of the forget set"),
    Metric("forget.ppl", "max", low=1.0, description="perplexity of the forget set"),
    Metric("unseen.ma", "min", **_UNIT, needs=("data.unseen",), description="MA on never-trained records"),
    Metric("unseen.ma_private", "min", **_UNIT, needs=("data.unseen",)),
    Metric("unseen.ppl", "min", low=1.0, needs=("data.unseen",)),
    Metric("retain.ppl", "min", low=1.0, needs=("data.heldout",), description="held-out perplexity"),
    Metric("mauve", "max", **_UNIT, needs=("eval.mauve.enabled", "data.prompts"),
           description="MAUVE of sampled continuations vs the true ones"),
    Metric("mauve_star", "max", **_UNIT, needs=("eval.mauve.enabled", "data.prompts"),
           description="the MAUVE library's smoothed variant (Pillutla et al., JMLR 2023)"),
    Metric("mauve_samples", "max", low=0.0, needs=("eval.mauve.enabled", "data.prompts")),
    Metric("mauve_sd", "min", **_UNIT, needs=("eval.mauve.enabled", "data.prompts"),
           description="standard deviation of MAUVE over eval.mauve.draws sampling draws (draws > 1)"),
    Metric("rep2", "min", **_UNIT, needs=("eval.mauve.enabled", "data.prompts")),
    Metric("rep3", "min", **_UNIT, needs=("eval.mauve.enabled", "data.prompts")),
    Metric("rep4", "min", **_UNIT, needs=("eval.mauve.enabled", "data.prompts")),
    Metric("mia_auc", "min", **_UNIT, needs=("data.unseen", "eval.mia"),
           description="membership-inference AUC (loss attack), forget vs unseen"),
    Metric("mia_auc_min_k", "min", **_UNIT, needs=("data.unseen", "eval.mia"),
           description="membership-inference AUC (Min-K% attack)"),
    # The relearning attack (trainables.relearn), on the held-out half of the forget set;
    # relearn.el<n> and relearn.el<n>_before: see `resolve`.
    Metric("relearn.ma", "min", **_UNIT, needs=("eval.relearn.enabled",),
           description="forget MA on the held-out half after relearning the other half"),
    Metric("relearn.ma_before", "min", **_UNIT, needs=("eval.relearn.enabled",),
           description="forget MA on the held-out half before relearning"),
    Metric("forget_quality", "max", **_UNIT, needs=("eval.retain_model",),
           description="KS-test p-value, per-sequence forget loss of the model vs the retain model's"),
]}

# Membership-inference attacks (trainables.attacks). Orientation: higher score = more member-like,
# so AUC 1 = every forget record recognised, 0.5 = forget looks like unseen text.
MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_pp", "ref", "grad_norm")
LOGIT_ATTACKS = ("loss", "zlib", "min_k", "min_k_pp")  # one forward's logits give them
CHEAP_ATTACKS = LOGIT_ATTACKS                         # measured when eval.mia_attacks is not given
PRIVLEAK_ATTACK = "min_k"                             # bare `privleak`: MUSE's PrivLeak uses Min-K%
_ATTACK_NEEDS = {"ref": ("eval.retain_model",)}
_MIA_NEEDS = ("data.unseen", "eval.mia")
_PRIVACY = re.compile(r"^(mia|mia_auc|privleak|privleak_abs)\.(\w+)$")


def mia_attacks(retain_model: str | None, listed: list[str] | None) -> list[str]:
    """The attacks an evaluation measures: eval.mia_attacks as listed, else the cheap ones plus
    `ref` where eval.retain_model is set (grad_norm, one backward per sequence, only when listed)."""
    if listed is not None:
        return list(listed)
    return list(CHEAP_ATTACKS) + (["ref"] if retain_model else [])


def privacy_metric(kind: str, attack: str) -> Metric:
    """mia.<attack>: the attack's AUC, forget vs unseen; privleak.<attack>: (AUC - AUC_retain) /
    AUC_retain, 0 = as private as the retain model, > 0 leaks more, < 0 over-unlearned (MUSE and
    open-unlearning orient AUC the other way: their signs are reversed); privleak_abs: its size,
    the objective to minimise (minimising the signed value rewards over-unlearning)."""
    needs = _MIA_NEEDS + _ATTACK_NEEDS.get(attack, ())
    if kind == "mia":
        return Metric(f"mia.{attack}", "min", **_UNIT, needs=needs,
                      description=f"membership-inference AUC ({attack} attack), forget vs unseen")
    needs = tuple(dict.fromkeys(needs + ("eval.retain_model",)))
    if kind == "privleak":
        return Metric(f"privleak.{attack}", "min", low=-1.0, needs=needs,
                      description=f"PrivLeak ({attack} attack) vs the retain model; 0 = as private as it")
    return Metric(f"privleak_abs.{attack}", "min", low=0.0, needs=needs,
                  description=f"|PrivLeak| ({attack} attack): distance from the retain model's privacy")

ALIASES: dict[str, str] = {
    "ma": "forget.ma", "forget_ma": "forget.ma", "ma_private": "forget.ma_private", "forget_ppl": "forget.ppl",
    "unseen_ma": "unseen.ma", "ppl": "retain.ppl", "retain_ppl": "retain.ppl", "heldout_ppl": "retain.ppl",
}

_EL = re.compile(r"^(?:(forget|unseen)\.)?el(\d+)$")
_RELEARN_EL = re.compile(r"^relearn\.el(\d+)(_before)?$")
RATIO = "_ratio"


def el_metric(section: str, n: int) -> Metric:
    return Metric(f"{section}.el{n}", "min", **_UNIT, needs=("data.unseen",) if section == "unseen" else (),
                  description=f"extraction likelihood EL_{n} on the {section} set")


def resolve(name: str) -> tuple[Metric, bool]:
    """A user-typed metric name -> (its table entry, whether it is a ratio after / original).
    Raises KeyError naming what is known."""
    ratio = name.endswith(RATIO)
    core = name[:-len(RATIO)] if ratio else name
    core = ALIASES.get(core, core)
    m = _EL.match(core)
    if m:
        return el_metric(m.group(1) or "forget", int(m.group(2))), ratio
    m = _RELEARN_EL.match(core)
    if m:
        when = "before" if m.group(2) else "after"
        return Metric(core, "min", **_UNIT, needs=("eval.relearn.enabled",), description=(
            f"forget EL_{m.group(1)} on the held-out half {when} relearning the other half")), ratio
    if core in METRICS:
        return METRICS[core], ratio
    if core in ("privleak", "privleak_abs"):
        core = f"{core}.{PRIVLEAK_ATTACK}"
    m = _PRIVACY.match(core)
    if m and m.group(2) in MIA_ATTACKS:
        return privacy_metric("mia" if m.group(1) == "mia_auc" else m.group(1), m.group(2)), ratio
    raise KeyError(f"unknown metric {name!r} (known: {known_names()})")


def known_names() -> str:
    return (f"el<n>, {', '.join(ALIASES)}, {', '.join(METRICS)}, unseen.el<n>, privleak, privleak_abs, "
            f"mia_auc.<a> / privleak.<a> / privleak_abs.<a> for a in {', '.join(MIA_ATTACKS)}; any + {RATIO}")
