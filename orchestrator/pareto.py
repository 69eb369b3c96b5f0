"""Pareto fronts and hypervolume for multi-objective sweeps.

Pure functions, no module-level state. A sweep's trials are rows (mappings)
holding the objective values as top-level keys next to whatever else the
driver records (trial id, params, run id); nested mappings such as
``{"params": {"gamma": 8.0}}`` are flattened to ``params/gamma`` for the CSV,
the hover text and the CLI table; a ``report`` mapping (metrics the sweep shows
beside its objectives without optimising them) is listed before the params.

Conventions:

* An objective is ``Objective(name, mode)`` with mode ``"min"`` or ``"max"``;
  a plain ``(name, mode)`` pair is accepted wherever objectives are.
* A row whose value for any objective is missing, None, non-numeric, NaN or
  infinite is a failed trial: it is on no front and adds no hypervolume.
* Domination: a dominates b when a is no worse in every objective and
  strictly better in at least one. Identical points do not dominate each
  other, so duplicates on the front are all kept.
* Internally everything is minimisation: max-objectives are negated.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from trainables.errors import InputError
from trainables.io import write_text
from trainables.metric_names import ALIASES, METRICS, resolve

__all__ = [
    "Objective",
    "as_objectives",
    "pareto_front",
    "hypervolume",
    "default_reference",
    "known_bound",
    "reference_point",
    "front_table",
    "write_front",
    "format_front",
    "KNOWN_BOUNDS",
]

_MODES = ("min", "max")


@dataclass(frozen=True)
class Objective:
    """One objective of a sweep: a metric name and whether to minimise or maximise it."""

    name: str
    mode: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"objective name must be a non-empty string, got {self.name!r}")
        if self.mode not in _MODES:
            raise InputError(
                f"objective {self.name!r}: mode must be 'min' or 'max', got {self.mode!r}")

    @property
    def sign(self) -> float:
        """+1 for min, -1 for max: multiply a value by it to get a minimisation value."""
        return 1.0 if self.mode == "min" else -1.0

    @property
    def arrow(self) -> str:
        return "\u2193" if self.mode == "min" else "\u2191"

    @property
    def label(self) -> str:
        """Axis label: the name and an arrow pointing in the better direction."""
        return f"{self.name} {self.arrow}"


def as_objectives(objectives: Iterable[Objective | Sequence[str]]) -> list[Objective]:
    """Objectives from Objective instances or (name, mode) pairs; checks names are unique."""
    out: list[Objective] = []
    for obj in objectives:
        if isinstance(obj, Objective):
            out.append(obj)
        elif isinstance(obj, (tuple, list)) and len(obj) == 2:
            out.append(Objective(obj[0], obj[1]))
        else:
            raise InputError(f"objective must be Objective(name, mode) or a (name, mode) pair, got {obj!r}")
    if not out:
        raise InputError("at least one objective is needed")
    names = [o.name for o in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"objective named more than once: {', '.join(dupes)}")
    return out


# --------------------------------------------------------------------------- values

def _value(row: Mapping[str, Any], name: str) -> float:
    """The row's value for `name` as a float; NaN for missing/None/non-numeric/inf."""
    try:
        v = row[name]
    except (KeyError, TypeError, IndexError):
        return math.nan
    if v is None or isinstance(v, (str, bytes)) and not str(v).strip():
        return math.nan
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def _matrix(points: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]) -> tuple[np.ndarray, np.ndarray]:
    """(indices of valid points, their values as an [m, d] minimisation matrix)."""
    n, d = len(points), len(objectives)
    raw = np.empty((n, d), dtype=float)
    for i, p in enumerate(points):
        for j, o in enumerate(objectives):
            raw[i, j] = _value(p, o.name)
    valid = np.flatnonzero(np.isfinite(raw).all(axis=1)) if n else np.zeros(0, dtype=int)
    signs = np.array([o.sign for o in objectives], dtype=float)
    return valid, raw[valid] * signs


def _nondominated_mask(P: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of P (minimisation) that no other row dominates.

    O(m log m) in 2-D; otherwise O(m^2 d) comparisons, vectorised in row
    chunks so memory stays bounded.
    """
    m, d = P.shape
    keep = np.ones(m, dtype=bool)
    if m <= 1:
        return keep
    if d == 1:
        return P[:, 0] == P[:, 0].min()
    if d == 2:
        return _nondominated_mask_2d(P)
    chunk = max(1, 4_000_000 // max(1, m * d))
    for start in range(0, m, chunk):
        block = P[start:start + chunk]                       # [c, d]
        le = (P[None, :, :] <= block[:, None, :]).all(axis=2)  # [c, m]: P[j] <= block[i]
        lt = (P[None, :, :] < block[:, None, :]).any(axis=2)
        keep[start:start + chunk] = ~(le & lt).any(axis=1)
    return keep


def _nondominated_mask_2d(P: np.ndarray) -> np.ndarray:
    """2-D case in O(m log m): sort by x; a point survives iff it has the
    smallest y among points with its x, and that y beats every point with a
    strictly smaller x. Duplicates of a surviving point survive too."""
    order = np.lexsort((P[:, 1], P[:, 0]))
    x, y = P[order, 0], P[order, 1]
    starts = np.flatnonzero(np.r_[True, x[1:] != x[:-1]])
    group_min = y[starts]                                   # sorted by y within each x group
    prev_best = np.r_[np.inf, np.minimum.accumulate(group_min)[:-1]]
    sizes = np.diff(np.r_[starts, len(x)])
    ok = (y == np.repeat(group_min, sizes)) & (y < np.repeat(prev_best, sizes))
    keep = np.empty(len(x), dtype=bool)
    keep[order] = ok
    return keep


def pareto_front(points: Sequence[Mapping[str, float]],
                 objectives: Sequence[Objective | Sequence[str]]) -> list[int]:
    """Indices (in input order) of the non-dominated points.

    Points with a missing/None/NaN/inf value in any objective are excluded.
    Identical points are all kept.
    """
    objs = as_objectives(objectives)
    valid, P = _matrix(points, objs)
    return [int(i) for i in valid[_nondominated_mask(P)]]


# --------------------------------------------------------------------------- hypervolume

def _hv2(P: np.ndarray, r: np.ndarray) -> float:
    """Exact 2-D hypervolume (minimisation), all points strictly below r."""
    order = np.lexsort((P[:, 1], P[:, 0]))   # by x, then y
    hv, best_y = 0.0, r[1]
    for x, y in P[order]:
        if y < best_y:
            hv += (r[0] - x) * (best_y - y)
            best_y = y
    return float(hv)


def _hv(P: np.ndarray, r: np.ndarray) -> float:
    """Exact hypervolume by slicing along the last objective (HSO-style).

    P holds points strictly below r in every coordinate. Cost is about
    O(n^(d-1) log n): exact and fast for the front sizes a sweep produces.
    """
    n, d = P.shape
    if n == 0:
        return 0.0
    if d == 1:
        return float(r[0] - P[:, 0].min())
    P = P[_nondominated_mask(P)]
    if d == 2:
        return _hv2(P, r)
    P = P[np.argsort(P[:, -1], kind="stable")]
    z = np.append(P[:, -1], r[-1])
    hv = 0.0
    for i in range(P.shape[0]):
        depth = z[i + 1] - z[i]
        if depth > 0:
            hv += depth * _hv(P[: i + 1, :-1], r[:-1])
    return float(hv)


def _reference_vector(reference: Mapping[str, float], objectives: Sequence[Objective]) -> np.ndarray:
    ref = np.empty(len(objectives), dtype=float)
    for j, o in enumerate(objectives):
        if o.name not in reference:
            raise InputError(f"reference point has no value for objective {o.name!r}")
        v = _value(reference, o.name)
        if not math.isfinite(v):
            raise InputError(f"reference value for objective {o.name!r} must be a finite number, "
                             f"got {reference[o.name]!r}")
        ref[j] = v * o.sign
    return ref


def hypervolume(points: Sequence[Mapping[str, float]],
                objectives: Sequence[Objective | Sequence[str]],
                reference: Mapping[str, float]) -> float:
    """Dominated hypervolume of the points w.r.t. `reference`, exact for any dimension.

    For a min-objective the reference value is an upper bound, for a
    max-objective a lower bound. Failed points, and points not strictly
    better than the reference in every objective, contribute nothing.
    """
    objs = as_objectives(objectives)
    r = _reference_vector(reference, objs)
    _, P = _matrix(points, objs)
    P = P[(P < r).all(axis=1)] if len(P) else P
    return _hv(P, r) if len(P) else 0.0


# --------------------------------------------------------------------------- reference points

def known_bound(name: str) -> tuple[str, float] | None:
    """(direction, worst value) of a bounded metric of the metric table (trainables.metric_names:
    el<n>, ma, mia_auc, mauve, ...), else None. A "section/" prefix is ignored ("forget/el3" is
    el3), and so are leading dotted parts the table does not know ("after.forget.el3").
    Ratios (`*_ratio`) have no known bound."""
    base = name.rsplit("/", 1)[-1]
    parts = base.split(".")
    for i in range(len(parts)):
        try:
            metric, ratio = resolve(".".join(parts[i:]))
        except KeyError:
            continue
        worst = metric.worst()
        return None if ratio or worst is None else (metric.direction, float(worst))
    return None


class _KnownBounds(Mapping):
    """`known_bound` as a read-only mapping: name -> (direction, worst value). Iterates the
    table's bounded names and aliases; el<n> for any n is found too."""

    def __getitem__(self, name: str) -> tuple[str, float]:
        bound = known_bound(name) if isinstance(name, str) else None
        if bound is None:
            raise KeyError(name)
        return bound

    def _names(self) -> list[str]:
        return [n for n in [*ALIASES, *METRICS] if known_bound(n) is not None]

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


#: Objectives with a known worst value (their natural hypervolume reference), from the table.
KNOWN_BOUNDS: Mapping[str, tuple[str, float]] = _KnownBounds()


def default_reference(points: Sequence[Mapping[str, float]],
                      objectives: Sequence[Objective | Sequence[str]]) -> dict[str, float]:
    """A reference point derived from the data: the worst observed value per
    objective pushed 10% of the observed range further in the worse direction
    (10% of max(|worst|, 1) when all values are equal), so every valid point,
    including the extremes of the front, contributes some volume.

    Only valid (all-objectives-finite) points count.
    """
    objs = as_objectives(objectives)
    _, P = _matrix(points, objs)
    if len(P) == 0:
        raise InputError("no trial has finite values for all objectives "
                         f"({', '.join(o.name for o in objs)}); cannot derive a reference point")
    worst, best = P.max(axis=0), P.min(axis=0)
    span = worst - best
    margin = np.where(span > 0, 0.1 * span, 0.1 * np.maximum(np.abs(worst), 1.0))
    ref = worst + margin
    return {o.name: float(ref[j] * o.sign) for j, o in enumerate(objs)}


def reference_point(objectives: Sequence[Objective | Sequence[str]],
                    points: Sequence[Mapping[str, float]] | None = None) -> dict[str, float]:
    """The reference point a sweep reports hypervolume against.

    Objectives the metric table bounds (``el*``, ``ma``, ``mia_auc``
    minimised; ``mauve`` maximised; see `known_bound`) get their worst
    possible value (1.0 for those min ones, 0.0 for mauve), so hypervolumes
    of different sweeps are comparable. Any other objective (or a known one
    optimised in the unusual direction) falls back to `default_reference`
    over `points`; without points that is an InputError naming it.
    """
    objs = as_objectives(objectives)
    ref: dict[str, float] = {}
    unknown: list[Objective] = []
    for o in objs:
        bound = known_bound(o.name)
        if bound is not None and bound[0] == o.mode:
            ref[o.name] = bound[1]
        else:
            unknown.append(o)
    if unknown:
        if points is None:
            raise InputError("no known bound for objective(s) "
                             f"{', '.join(repr(o.name) for o in unknown)}: pass a reference point or the trials")
        data_ref = default_reference(points, objs)
        for o in unknown:
            ref[o.name] = data_ref[o.name]
    return {o.name: ref[o.name] for o in objs}


# --------------------------------------------------------------------------- tables

_ID_KEYS = ("trial_id", "trial", "trial_number", "number", "id")
_PARAM_PREFIXES = ("params/", "config/")
_REPORT_PREFIX = "report/"  # metrics a sweep reports beside its objectives: shown first


def _flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{key}/"))
        else:
            out[key] = v
    return out


def _id_key(rows: Sequence[Mapping[str, Any]]) -> str | None:
    for key in _ID_KEYS:
        if any(key in r for r in rows):
            return key
    return None


def _param_keys(flat_rows: Sequence[Mapping[str, Any]], skip: set[str]) -> list[str]:
    """Columns to show next to the objectives: params/* or config/* when
    present, else every other scalar column. First-seen order."""
    keys: list[str] = []
    for r in flat_rows:
        for k in r:
            if k not in skip and k not in keys:
                keys.append(k)
    prefixed = [k for k in keys if k.startswith(_PARAM_PREFIXES)]
    if not prefixed:
        return keys
    return [k for k in keys if k.startswith(_REPORT_PREFIX)] + prefixed


def _short(key: str) -> str:
    for p in (_REPORT_PREFIX, *_PARAM_PREFIXES):
        if key.startswith(p):
            return key[len(p):]
    return key


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else f"{float(v):.4g}"
    if isinstance(v, np.integer):
        return str(int(v))
    return str(v)


def _front_indices_sorted(rows: Sequence[Mapping[str, Any]], objs: list[Objective]) -> list[int]:
    idx = pareto_front(rows, objs)
    first = objs[0]
    # Best first in the first objective; stable, so ties keep input order.
    return sorted(idx, key=lambda i: _value(rows[i], first.name) * first.sign)


def front_table(rows: Sequence[Mapping[str, Any]],
                objectives: Sequence[Objective | Sequence[str]]) -> list[dict]:
    """The front rows (copies, all columns kept), sorted best-first by the
    first objective (ascending for min, descending for max); ties keep
    input order."""
    objs = as_objectives(objectives)
    return [dict(rows[i]) for i in _front_indices_sorted(rows, objs)]


def format_front(rows: Sequence[Mapping[str, Any]],
                 objectives: Sequence[Objective | Sequence[str]],
                 reference: Mapping[str, float] | None = None) -> str:
    """A plain-text table of the front for the CLI: trial id, objectives, params.

    With `reference`, a hypervolume line is added under the table.
    """
    objs = as_objectives(objectives)
    n = len(rows)
    valid, _ = _matrix(rows, objs)
    front = front_table(rows, objs)
    names = ", ".join(o.label for o in objs)
    head = f"Pareto front ({names}): {len(front)} of {n} trials"
    if n - len(valid):
        head += f" ({n - len(valid)} failed or incomplete)"
    if not front:
        return head + "\nno trial has finite values for all objectives"
    id_key = _id_key(front)
    flat = [_flatten(r) for r in front]
    skip = {o.name for o in objs} | ({id_key} if id_key else set())
    params = _param_keys(flat, skip)
    header = ([id_key] if id_key else ["#"]) + [o.label for o in objs] + [_short(k) for k in params]
    body = []
    for i, (r, f) in enumerate(zip(front, flat)):
        cells = [_fmt(r.get(id_key)) if id_key else str(i + 1)]
        cells += [_fmt(_value(r, o.name)) for o in objs]
        cells += [_fmt(f.get(k)) for k in params]
        body.append(cells)
    widths = [max(len(h), *(len(b[j]) for b in body)) for j, h in enumerate(header)]
    right = range(1, 1 + len(objs))  # objective columns right-aligned; id and params left

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if j in right else c.ljust(w)
                         for j, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [head, line(header), line(["-" * w for w in widths])] + [line(b) for b in body]
    if reference is not None:
        hv = hypervolume(rows, objs, reference)
        ref = ", ".join(f"{o.name}={_fmt(float(reference[o.name]))}" for o in objs)
        out.append(f"hypervolume {hv:.6g} (reference {ref})")
    return "\n".join(out)


# --------------------------------------------------------------------------- files

def _write_bytes(path: Path, data: bytes) -> None:
    """Atomic like trainables.io.write_text, for the PNG (bytes): temp file + os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


def _csv_text(front: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for f in front:
        w.writerow(["" if f.get(c) is None else (repr(float(f[c])) if isinstance(f[c], (float, np.floating))
                                                  else str(f[c])) for c in columns])
    return buf.getvalue()


def _hover(row_flat: Mapping[str, Any], id_key: str | None, objs: list[Objective],
           params: Sequence[str], fallback_id: int) -> str:
    tid = row_flat.get(id_key) if id_key else fallback_id
    lines = [f"trial {_fmt(tid)}"]
    lines += [f"{o.label}: {_fmt(_value(row_flat, o.name))}" for o in objs]
    lines += [f"{_short(k)}: {_fmt(row_flat.get(k))}" for k in params if k in row_flat]
    return "<br>".join(lines)


def _step_where(obj_x: Objective) -> str:
    # Front sorted by x ascending: the attainment boundary holds the left
    # point's y until the next point when x is minimised, the right point's
    # y when x is maximised.
    return "post" if obj_x.mode == "min" else "pre"


def _axis_pairs(d: int) -> list[tuple[int, int]]:
    return [(0, 1)] if d == 2 else [(a, b) for a in range(d) for b in range(a + 1, d)]


def _png_bytes(P: np.ndarray, front_mask: np.ndarray, objs: list[Objective],
               reference: np.ndarray, title: str) -> bytes:
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas

    d = len(objs)
    if d == 1:
        fig = Figure(figsize=(6.4, 4.0))
        ax = fig.subplots()
        x = np.arange(len(P))
        ax.scatter(x[~front_mask], P[~front_mask, 0], c="0.6", s=14, label="trials")
        ax.scatter(x[front_mask], P[front_mask, 0], c="C3", s=30, label="best")
        ax.set_xlabel("trial (completed, in order)")
        ax.set_ylabel(objs[0].label)
        ax.legend(loc="best", fontsize=8)
        fig.suptitle(title, fontsize=10)
    else:
        pairs = _axis_pairs(d)
        cols = min(3, len(pairs))
        rows_ = math.ceil(len(pairs) / cols)
        fig = Figure(figsize=(5.2 * cols, 4.2 * rows_))
        axes = np.atleast_1d(fig.subplots(rows_, cols)).ravel()
        for ax in axes[len(pairs):]:
            ax.set_visible(False)
        for ax, (a, b) in zip(axes, pairs):
            ax.scatter(P[~front_mask, a], P[~front_mask, b], c="0.65", s=14, label="trials")
            F = P[front_mask]
            F = F[np.lexsort((F[:, b], F[:, a]))]
            if d == 2 and len(F):
                ax.step(F[:, a], F[:, b], where=_step_where(objs[a]), c="C3", lw=1.2, alpha=0.8)
            ax.scatter(F[:, a], F[:, b], c="C3", s=32, zorder=3, label="Pareto front")
            ax.scatter([reference[a]], [reference[b]], marker="x", c="k", s=30, label="reference")
            ax.set_xlabel(objs[a].label)
            ax.set_ylabel(objs[b].label)
            ax.grid(alpha=0.3)
        axes[0].legend(loc="best", fontsize=8)
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def _html_text(P: np.ndarray, front_mask: np.ndarray, hovers: list[str], objs: list[Objective],
               reference: np.ndarray, title: str) -> str:
    import plotly.graph_objects as go

    d = len(objs)
    hovers_a = np.array(hovers, dtype=object)
    tmpl = "%{text}<extra></extra>"
    if d == 2:
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=P[~front_mask, 0], y=P[~front_mask, 1], mode="markers", name="trials",
                                 marker=dict(color="lightgrey", size=7), text=list(hovers_a[~front_mask]),
                                 hovertemplate=tmpl))
        order = np.lexsort((P[front_mask, 1], P[front_mask, 0]))
        shape = "hv" if _step_where(objs[0]) == "post" else "vh"
        fig.add_trace(go.Scatter(x=P[front_mask, 0][order], y=P[front_mask, 1][order], mode="lines+markers",
                                 name="Pareto front", line=dict(color="crimson", shape=shape),
                                 marker=dict(color="crimson", size=9),
                                 text=list(hovers_a[front_mask][order]), hovertemplate=tmpl))
        fig.add_trace(go.Scatter(x=[reference[0]], y=[reference[1]], mode="markers", name="reference",
                                 marker=dict(color="black", symbol="x", size=9), hoverinfo="skip"))
        fig.update_xaxes(title_text=objs[0].label)
        fig.update_yaxes(title_text=objs[1].label)
    elif d == 1:
        x = np.arange(len(P))
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=x[~front_mask], y=P[~front_mask, 0], mode="markers", name="trials",
                                 marker=dict(color="lightgrey", size=7), text=list(hovers_a[~front_mask]),
                                 hovertemplate=tmpl))
        fig.add_trace(go.Scatter(x=x[front_mask], y=P[front_mask, 0], mode="markers", name="best",
                                 marker=dict(color="crimson", size=9), text=list(hovers_a[front_mask]),
                                 hovertemplate=tmpl))
        fig.update_xaxes(title_text="trial (completed, in order)")
        fig.update_yaxes(title_text=objs[0].label)
    else:
        dims = lambda m: [dict(label=o.label, values=P[m, j]) for j, o in enumerate(objs)]  # noqa: E731
        fig = go.Figure()
        fig.add_trace(go.Splom(dimensions=dims(~front_mask), name="trials", text=list(hovers_a[~front_mask]),
                               hovertemplate=tmpl, marker=dict(color="lightgrey", size=6),
                               diagonal_visible=False))
        fig.add_trace(go.Splom(dimensions=dims(front_mask), name="Pareto front", text=list(hovers_a[front_mask]),
                               hovertemplate=tmpl, marker=dict(color="crimson", size=8),
                               diagonal_visible=False))
    fig.update_layout(title=title, template="plotly_white", hovermode="closest")
    # include_plotlyjs=True embeds plotly.js: the page works offline.
    return fig.to_html(include_plotlyjs=True, full_html=True)


def write_front(rows: Sequence[Mapping[str, Any]],
                objectives: Sequence[Objective | Sequence[str]],
                out_dir: str | os.PathLike,
                reference: Mapping[str, float] | None = None) -> dict[str, Path]:
    """Write pareto_front.{csv,json,png,html} into out_dir (created if needed).

    csv: the front rows, nested mappings flattened to a/b columns.
    json: {"objectives", "reference", "hypervolume", "n_trials", "n_valid", "front"}.
    png: all completed trials grey, front red (connected as a step line in 2-D).
    html: the same, interactive (plotly.js embedded, works offline); hover
    shows trial id, objectives and params.
    Reference defaults to `reference_point(objectives, rows)`. Each file is
    written atomically. Returns {"csv"|"json"|"png"|"html": path}.
    """
    objs = as_objectives(objectives)
    if reference is None:
        reference = reference_point(objs, rows)
    ref_vec = _reference_vector(reference, objs)            # validates; minimisation space
    ref_orig = ref_vec * np.array([o.sign for o in objs])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    front = front_table(rows, objs)
    hv = hypervolume(rows, objs, reference)
    valid, Pmin = _matrix(rows, objs)
    P = Pmin * np.array([o.sign for o in objs])              # back to original values
    front_set = set(pareto_front(rows, objs))
    front_mask = np.array([int(i) in front_set for i in valid], dtype=bool)

    id_key = _id_key(rows)
    flat_all = [_flatten(rows[i]) for i in valid]
    skip = {o.name for o in objs} | ({id_key} if id_key else set())
    params = _param_keys(flat_all, skip)
    hovers = [_hover(f, id_key, objs, params, int(i)) for f, i in zip(flat_all, valid)]

    flat_front = [_flatten(r) for r in front]
    columns: list[str] = ([id_key] if id_key else []) + [o.name for o in objs]
    for f in flat_front:
        columns += [k for k in f if k not in columns]

    n_failed = len(rows) - len(valid)
    title = (f"Pareto front: {len(front)} of {len(rows)} trials"
             + (f" ({n_failed} failed)" if n_failed else "") + f", hypervolume {hv:.4g}")

    payload = {
        "objectives": [{"name": o.name, "mode": o.mode} for o in objs],
        "reference": {o.name: float(ref_orig[j]) for j, o in enumerate(objs)},
        "hypervolume": hv,
        "n_trials": len(rows),
        "n_valid": int(len(valid)),
        "front": _jsonable(front),
    }
    paths = {k: out / f"pareto_front.{k}" for k in ("csv", "json", "png", "html")}
    write_text(paths["csv"], _csv_text(flat_front, columns))
    write_text(paths["json"], json.dumps(payload, indent=2, allow_nan=False) + "\n")  # strict JSON: no NaN
    _write_bytes(paths["png"], _png_bytes(P, front_mask, objs, ref_orig, title))
    write_text(paths["html"], _html_text(P, front_mask, hovers, objs, ref_orig, title))
    return paths
