"""Objective and constraint values of a trial: an evaluation report (trainables.evaluate) ->
the numbers a sweep optimises, by the one metric table (trainables.metric_names).

An objective / constraint names a metric (`el3`, `mauve`, `forget.ma`, `unseen.el10`) or its
ratio to the original model's value (`retain_ppl_ratio`: after / before).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Mapping

from trainables.errors import InputError
from trainables.metric_names import MIA_ATTACKS, Metric, known_names, mia_attacks, resolve
from trainables.tree import get_path

if TYPE_CHECKING:
    from orchestrator.space import SearchSpace

_EL_N = re.compile(r"\.el(\d+)$")
_ATTACK = re.compile(r"^(?:mia|privleak|privleak_abs)\.(\w+)$")


def lookup_metric(name: str, key: str) -> tuple[Metric, bool]:
    """(table entry, is a ratio) of a user-typed metric name; InputError naming `key` if unknown."""
    try:
        return resolve(name)
    except KeyError:
        raise InputError(f"{key}: unknown metric {name!r} (known: {known_names()})") from None


def check_measurable(metric: Metric, key: str, base: Mapping, sampled: set[str]) -> None:
    """Refuse an objective / constraint the base config would never measure: EL_n needs n in
    eval.el_n (unless el_n is a parameter); the table's `needs` keys must be set."""
    m = _EL_N.search(metric.name)
    if m and "eval.el_n" not in sampled and int(m.group(1)) not in (get_path(base, "eval.el_n") or []):
        raise InputError(f"{key}: el{m.group(1)} needs {m.group(1)} in the base config's eval.el_n "
                         f"(now {get_path(base, 'eval.el_n')})")
    attack = _ATTACK.match(metric.name)
    if attack and attack.group(1) in MIA_ATTACKS and not {"eval.mia_attacks", "eval.retain_model"} & sampled:
        measured = mia_attacks(get_path(base, "eval.retain_model"), get_path(base, "eval.mia_attacks"))
        if attack.group(1) not in measured:
            raise InputError(f"{key}: '{metric.name}' needs {attack.group(1)} in the base config's "
                             f"eval.mia_attacks (now measured: {', '.join(measured)})")
    draws = get_path(base, "eval.mauve.draws") or 1
    if metric.name == "mauve_sd" and "eval.mauve.draws" not in sampled and draws < 2:
        raise InputError(f"{key}: 'mauve_sd' needs eval.mauve.draws >= 2 in the base config")
    missing = [k for k in metric.needs if not get_path(base, k)]
    if missing:
        raise InputError(f"{key}: '{metric.name}' needs {' and '.join(missing)} set in the base config")


def report_value(report: Mapping, path: str) -> float:
    """The number at `path` of a report; NaN where it is missing or not a number."""
    value = get_path(report, path)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def metric_value(name: str, after: Mapping, before: Mapping | None) -> float:
    metric, ratio = resolve(name)
    value = report_value(after, metric.name)
    if not ratio:
        return value
    ref = report_value(before or {}, metric.name)
    if not math.isfinite(ref) or ref == 0:
        return math.nan
    return value / ref


def final_metrics(space: SearchSpace, after: Mapping, before: Mapping | None) -> dict:
    """Objectives, constraint metrics, the space's reported metrics and the violations of one
    evaluated trial."""
    out: dict[str, Any] = {}
    for o in space.objectives:
        out[o.name] = metric_value(o.metric, after, before)
    for name in space.report:
        out[name] = metric_value(name, after, before)
    violations = []
    for c in space.constraints:
        value = metric_value(c.metric, after, before)
        out.setdefault(c.metric, value)
        violations.append(c.violation(value))
    out["constraint_violations"] = violations
    out["feasible"] = all(v <= 0 for v in violations)
    return out
