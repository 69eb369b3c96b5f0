"""The one table of metric names.

Every measure has one name: its path in an evaluation report (`forget.ma`,
`retain.ppl`, `mauve`, `forget.el3`), which is also the key the training loop
logs per step, the key a search space's objectives and constraints name and the
column the Pareto files use. A few short aliases (`el3`, `ma`, `ppl`) are accepted
where users type names; `*_ratio` is the value after unlearning over the original's.
Each entry says which way is better for unlearning and the bounds it is known to lie
in (the hypervolume reference of a bounded objective is its worst bound).

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
    Metric("mauve_samples", "max", low=0.0, needs=("eval.mauve.enabled", "data.prompts")),
    Metric("rep2", "min", **_UNIT, needs=("eval.mauve.enabled", "data.prompts")),
    Metric("rep3", "min", **_UNIT, needs=("eval.mauve.enabled", "data.prompts")),
    Metric("rep4", "min", **_UNIT, needs=("eval.mauve.enabled", "data.prompts")),
    Metric("mia_auc", "min", **_UNIT, needs=("data.unseen", "eval.mia"),
           description="membership-inference AUC (loss attack), forget vs unseen"),
    Metric("mia_auc_min_k", "min", **_UNIT, needs=("data.unseen", "eval.mia"),
           description="membership-inference AUC (Min-K% attack)"),
]}

ALIASES: dict[str, str] = {
    "ma": "forget.ma", "forget_ma": "forget.ma", "ma_private": "forget.ma_private", "forget_ppl": "forget.ppl",
    "unseen_ma": "unseen.ma", "ppl": "retain.ppl", "retain_ppl": "retain.ppl", "heldout_ppl": "retain.ppl",
}

_EL = re.compile(r"^(?:(forget|unseen)\.)?el(\d+)$")
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
    if core in METRICS:
        return METRICS[core], ratio
    raise KeyError(f"unknown metric {name!r} (known: el<n>, {', '.join(ALIASES)}, {', '.join(METRICS)}, "
                   f"unseen.el<n>; any of them + {RATIO})")


def known_names() -> str:
    return f"el<n>, {', '.join(ALIASES)}, {', '.join(METRICS)}, unseen.el<n>; any + {RATIO}"
