"""orchestrator.pareto against brute-force references and hand-worked examples."""

from __future__ import annotations

import itertools
import json
import math
import random
import re

import pytest

from orchestrator.pareto import (
    KNOWN_BOUNDS,
    Objective,
    default_reference,
    format_front,
    front_table,
    hypervolume,
    known_bound,
    pareto_front,
    reference_point,
    write_front,
)
from trainables.errors import InputError

# --------------------------------------------------------------------------- brute force


def _ok(p, objs):
    for o in objs:
        v = p.get(o.name)
        if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
    return True


def _better_or_equal(a, b, o):
    return a <= b if o.mode == "min" else a >= b


def _strictly_better(a, b, o):
    return a < b if o.mode == "min" else a > b


def brute_front(points, objs):
    """Plain-python O(n^2) pairwise domination in the original (mixed) modes."""
    ok = [i for i, p in enumerate(points) if _ok(p, objs)]
    out = []
    for i in ok:
        dominated = False
        for j in ok:
            if j == i:
                continue
            a, b = points[j], points[i]
            if all(_better_or_equal(a[o.name], b[o.name], o) for o in objs) and \
                    any(_strictly_better(a[o.name], b[o.name], o) for o in objs):
                dominated = True
                break
        if not dominated:
            out.append(i)
    return out


def brute_hv(points, objs, ref):
    """Exact union-of-boxes volume on the grid of all coordinates.

    Each point p spans the box between p and the reference. Cut every axis at
    every coordinate that lies between the best value and the reference; a
    grid cell is inside the union iff some box contains it, i.e. some point
    is at least as good as the cell's best corner in every objective.
    """
    pts = [p for p in points if _ok(p, objs)]
    axes = []
    for o in objs:
        r = ref[o.name]
        if o.mode == "min":
            cuts = sorted({p[o.name] for p in pts if p[o.name] < r} | {r})
        else:
            cuts = sorted({p[o.name] for p in pts if p[o.name] > r} | {r})
        axes.append(list(zip(cuts, cuts[1:])))
    total = 0.0
    for cell in itertools.product(*axes):
        # the cell corner nearest the optimum must be reached by some point
        covered = False
        for p in pts:
            inside = True
            for o, (lo, hi) in zip(objs, cell):
                if o.mode == "min" and not p[o.name] <= lo:
                    inside = False
                    break
                if o.mode == "max" and not p[o.name] >= hi:
                    inside = False
                    break
            if inside:
                covered = True
                break
        if covered:
            vol = 1.0
            for lo, hi in cell:
                vol *= hi - lo
            total += vol
    return total


def random_points(rng, objs, n, lo=0, hi=4, bad_rate=0.15):
    """Small-range integers (ties and duplicates are common) plus failed trials."""
    pts = []
    for i in range(n):
        p = {"trial_id": f"t{i:03d}", "params": {"gamma": rng.choice([1, 5, 10])}}
        for o in objs:
            p[o.name] = rng.randint(lo, hi)
        if rng.random() < bad_rate:
            o = rng.choice(objs)
            kind = rng.choice(["nan", "inf", "-inf", "none", "missing"])
            if kind == "missing":
                del p[o.name]
            else:
                p[o.name] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "none": None}[kind]
        pts.append(p)
    # an exact duplicate of an existing row's objective values
    if pts:
        dup = dict(rng.choice(pts))
        dup["trial_id"] = "dup"
        pts.append(dup)
    return pts


def random_objs(rng, d):
    return [Objective(f"f{j}", rng.choice(["min", "max"])) for j in range(d)]


# --------------------------------------------------------------------------- pareto_front


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_front_matches_brute_force(d):
    rng = random.Random(100 + d)
    for _ in range(60):
        objs = random_objs(rng, d)
        pts = random_points(rng, objs, rng.randint(0, 25))
        assert pareto_front(pts, objs) == brute_front(pts, objs)


def test_front_keeps_identical_points_and_input_order():
    objs = [Objective("el3", "min"), Objective("mauve", "max")]
    pts = [
        {"el3": 0.5, "mauve": 0.5},   # 0 dominated by 2
        {"el3": 0.2, "mauve": 0.4},   # 1 front
        {"el3": 0.4, "mauve": 0.8},   # 2 front
        {"el3": 0.2, "mauve": 0.4},   # 3 duplicate of 1: kept
        {"el3": 0.2, "mauve": 0.3},   # 4 dominated by 1 (same el3, worse mauve)
        {"el3": float("nan"), "mauve": 0.99},  # 5 failed
        {"el3": 0.0},                 # 6 missing mauve
        {"el3": None, "mauve": 1.0},  # 7 failed
    ]
    assert pareto_front(pts, objs) == [1, 2, 3]
    assert pareto_front([], objs) == []
    assert pareto_front([{"el3": math.inf, "mauve": 1.0}], objs) == []


def test_tuple_objectives_accepted():
    pts = [{"a": 1, "b": 2}, {"a": 2, "b": 1}, {"a": 2, "b": 2}]
    assert pareto_front(pts, [("a", "min"), ("b", "min")]) == [0, 1]
    assert pareto_front(pts, [("a", "max"), ("b", "max")]) == [2]


def test_front_large_random_vectorised():
    rng = random.Random(7)
    objs = [Objective("x", "min"), Objective("y", "max"), Objective("z", "min")]
    pts = [{"x": rng.random(), "y": rng.random(), "z": rng.random()} for _ in range(400)]
    assert pareto_front(pts, objs) == brute_front(pts, objs)


# --------------------------------------------------------------------------- hypervolume


def test_hypervolume_hand_example_2d():
    objs = [Objective("a", "min"), Objective("b", "min")]
    pts = [{"a": 1, "b": 3}, {"a": 2, "b": 2}, {"a": 3, "b": 1}]
    # staircase under reference (4, 4): 3*1 + 2*1 + 1*1
    assert hypervolume(pts, objs, {"a": 4, "b": 4}) == pytest.approx(6.0)
    # a dominated point and a duplicate change nothing
    more = pts + [{"a": 3, "b": 3}, {"a": 2, "b": 2}]
    assert hypervolume(more, objs, {"a": 4, "b": 4}) == pytest.approx(6.0)


def test_hypervolume_hand_example_el3_mauve():
    objs = [Objective("el3", "min"), Objective("mauve", "max")]
    pts = [
        {"el3": 0.2, "mauve": 0.5},
        {"el3": 0.5, "mauve": 0.9},
        {"el3": 0.6, "mauve": 0.4},   # dominated
    ]
    ref = {"el3": 1.0, "mauve": 0.0}
    # box A: (1-0.2)*0.5 = 0.40; box B: (1-0.5)*0.9 = 0.45; overlap (1-0.5)*0.5 = 0.25
    assert hypervolume(pts, objs, ref) == pytest.approx(0.40 + 0.45 - 0.25)
    assert hypervolume(pts, objs, reference_point(objs)) == pytest.approx(0.60)


def test_hypervolume_hand_examples_3d():
    objs = [Objective("x", "min"), Objective("y", "min"), Objective("z", "min")]
    ref = {"x": 1, "y": 2, "z": 3}
    assert hypervolume([{"x": 0, "y": 0, "z": 0}], objs, ref) == pytest.approx(6.0)
    # two unit-cube corners of a 2x2x2 box: 4 + 4 - overlap 2
    ref2 = {"x": 2, "y": 2, "z": 2}
    pts = [{"x": 0, "y": 0, "z": 1}, {"x": 1, "y": 0, "z": 0}]
    assert hypervolume(pts, objs, ref2) == pytest.approx(6.0)
    # mixed modes: maximising z with reference 0 mirrors the same geometry
    objs_m = [Objective("x", "min"), Objective("y", "min"), Objective("z", "max")]
    pts_m = [{"x": 0, "y": 0, "z": 1}, {"x": 1, "y": 0, "z": 2}]
    assert hypervolume(pts_m, objs_m, {"x": 2, "y": 2, "z": 0}) == pytest.approx(6.0)


def test_hypervolume_points_not_better_than_reference_contribute_nothing():
    objs = [Objective("el3", "min"), Objective("mauve", "max")]
    ref = {"el3": 1.0, "mauve": 0.0}
    assert hypervolume([{"el3": 1.0, "mauve": 0.9}], objs, ref) == 0.0   # equal in el3
    assert hypervolume([{"el3": 1.2, "mauve": 0.9}], objs, ref) == 0.0   # worse in el3
    assert hypervolume([{"el3": 0.5, "mauve": 0.0}], objs, ref) == 0.0   # equal in mauve
    assert hypervolume([], objs, ref) == 0.0
    assert hypervolume([{"el3": 0.5, "mauve": math.nan}], objs, ref) == 0.0
    # a point beyond the reference does not cut into another's volume
    assert hypervolume([{"el3": 0.5, "mauve": 0.5}, {"el3": 1.5, "mauve": 1.0}], objs, ref) == \
        pytest.approx(0.25)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_hypervolume_matches_brute_force(d):
    rng = random.Random(200 + d)
    n_cases = {1: 40, 2: 60, 3: 40}[d]
    for _ in range(n_cases):
        objs = random_objs(rng, d)
        pts = random_points(rng, objs, rng.randint(0, 14 if d == 3 else 25), lo=0, hi=6)
        # reference inside the data range too, so some points fall outside it
        ref = {o.name: rng.randint(3, 7) if o.mode == "min" else rng.randint(-1, 3) for o in objs}
        assert hypervolume(pts, objs, ref) == pytest.approx(brute_hv(pts, objs, ref), abs=1e-9)


def test_hypervolume_4d_matches_brute_force_small():
    rng = random.Random(4)
    for _ in range(10):
        objs = random_objs(rng, 4)
        pts = random_points(rng, objs, 8, lo=0, hi=3)
        ref = {o.name: 4 if o.mode == "min" else -1 for o in objs}
        assert hypervolume(pts, objs, ref) == pytest.approx(brute_hv(pts, objs, ref), abs=1e-9)


def test_hypervolume_reference_errors():
    objs = [Objective("el3", "min"), Objective("mauve", "max")]
    with pytest.raises(InputError, match="mauve"):
        hypervolume([{"el3": 0.1, "mauve": 0.5}], objs, {"el3": 1.0})
    with pytest.raises(InputError, match="el3"):
        hypervolume([{"el3": 0.1, "mauve": 0.5}], objs, {"el3": math.nan, "mauve": 0.0})


# --------------------------------------------------------------------------- references


def test_reference_point_known_bounds_and_fallback():
    objs = [Objective("el3", "min"), Objective("el10", "min"), Objective("ma", "min"),
            Objective("mia_auc", "min"), Objective("mauve", "max")]
    assert reference_point(objs) == {"el3": 1.0, "el10": 1.0, "ma": 1.0, "mia_auc": 1.0, "mauve": 0.0}
    assert KNOWN_BOUNDS["el3"] == ("min", 1.0) and KNOWN_BOUNDS["mauve"] == ("max", 0.0)
    assert reference_point([Objective("forget/el3", "min")]) == {"forget/el3": 1.0}
    # the bounds come from the metric table: report paths too, never a ratio or an unbounded metric
    assert reference_point([Objective("unseen.el3", "min"), Objective("mia_auc_min_k", "min")]) == \
        {"unseen.el3": 1.0, "mia_auc_min_k": 1.0}
    assert known_bound("retain.ppl") is None and known_bound("el3_ratio") is None
    assert known_bound("happiness") is None and "el3" in KNOWN_BOUNDS and "mauve" in dict(KNOWN_BOUNDS)

    pts = [{"el3": 0.2, "ppl": 10.0}, {"el3": 0.4, "ppl": 20.0}, {"el3": None, "ppl": 99.0}]
    mixed = [Objective("el3", "min"), Objective("ppl", "min")]
    assert reference_point(mixed, pts) == {"el3": 1.0, "ppl": pytest.approx(21.0)}
    with pytest.raises(InputError, match="ppl"):
        reference_point(mixed)
    # a known name optimised the unusual way falls back to the data
    assert reference_point([Objective("mauve", "min")], [{"mauve": 0.2}, {"mauve": 0.6}]) == \
        {"mauve": pytest.approx(0.64)}


def test_default_reference():
    objs = [Objective("a", "min"), Objective("b", "max")]
    pts = [{"a": 0.0, "b": 1.0}, {"a": 10.0, "b": 3.0}, {"a": math.nan, "b": -50.0}]
    ref = default_reference(pts, objs)
    assert ref == {"a": pytest.approx(11.0), "b": pytest.approx(0.8)}
    # every valid point is strictly better than the derived reference
    assert hypervolume(pts, objs, ref) > 0
    assert default_reference([{"a": 5.0, "b": 5.0}], objs) == {"a": pytest.approx(5.5), "b": pytest.approx(4.5)}
    with pytest.raises(InputError):
        default_reference([{"a": None, "b": 1.0}], objs)


# --------------------------------------------------------------------------- validation


def test_bad_mode_raises_input_error_naming_objective():
    with pytest.raises(InputError, match="el3"):
        Objective("el3", "minimize")
    with pytest.raises(InputError, match="mauve"):
        pareto_front([{"mauve": 1.0}], [("mauve", "up")])
    with pytest.raises(InputError):
        pareto_front([], [])
    with pytest.raises(InputError, match="el3"):
        pareto_front([], [Objective("el3", "min"), Objective("el3", "max")])


# --------------------------------------------------------------------------- tables and files


def _sweep_rows():
    return [
        {"trial_id": "t0", "params": {"gamma": 1.5, "lr": 1e-4, "policy": "all"}, "el3": 0.30, "mauve": 0.70},
        {"trial_id": "t1", "params": {"gamma": 9.0, "lr": 2e-4, "policy": "reference"}, "el3": 0.10, "mauve": 0.60},
        {"trial_id": "t2", "params": {"gamma": 20.0, "lr": 5e-4, "policy": "spans"}, "el3": 0.40, "mauve": 0.65},
        {"trial_id": "t3", "params": {"gamma": 3.0, "lr": 1e-5, "policy": "entities"}, "el3": 0.60, "mauve": 0.95},
        {"trial_id": "t4", "params": {"gamma": 40.0, "lr": 1e-3, "policy": "all"}, "el3": None, "mauve": None},
    ]


def test_front_table_sorted_by_first_objective_keeps_columns():
    objs = [Objective("el3", "min"), Objective("mauve", "max")]
    table = front_table(_sweep_rows(), objs)
    assert [r["trial_id"] for r in table] == ["t1", "t0", "t3"]
    assert table[0]["params"]["policy"] == "reference"
    # max first objective: best (largest) first
    table = front_table(_sweep_rows(), [Objective("mauve", "max"), Objective("el3", "min")])
    assert [r["trial_id"] for r in table] == ["t3", "t0", "t1"]


def test_format_front():
    objs = [Objective("el3", "min"), Objective("mauve", "max")]
    text = format_front(_sweep_rows(), objs, reference={"el3": 1.0, "mauve": 0.0})
    lines = text.splitlines()
    assert "3 of 5 trials" in lines[0] and "1 failed" in lines[0]
    assert "trial_id" in lines[1] and "el3 \u2193" in lines[1] and "mauve \u2191" in lines[1]
    assert "gamma" in lines[1] and "policy" in lines[1]
    body = lines[3:6]
    assert [ln.split()[0] for ln in body] == ["t1", "t0", "t3"]
    assert "hypervolume" in lines[-1]
    assert "no trial" in format_front([{"el3": None}], objs)


def test_reported_metrics_come_before_the_params_and_never_decide_the_front():
    objs = [Objective("el3", "min"), Objective("mauve", "max")]
    rows = [{"trial_id": r["trial_id"], "el3": r["el3"], "mauve": r["mauve"],
             "report": {"privleak.loss": 0.5 - i / 10}, "params": r["params"]} for i, r in enumerate(_sweep_rows())]
    lines = format_front(rows, objs).splitlines()
    header = lines[1].split()
    assert header[:5] == ["trial_id", "el3", "\u2193", "mauve", "\u2191"]
    assert header[5:7] == ["privleak.loss", "gamma"]
    assert [ln.split()[0] for ln in lines[3:6]] == ["t1", "t0", "t3"]  # the same front as without it
    assert lines[3].split()[3] == "0.4"  # t1: id, el3, mauve, then its privleak.loss


def test_write_front_produces_all_files(tmp_path):
    objs = [Objective("el3", "min"), Objective("mauve", "max")]
    rows = _sweep_rows()
    ref = {"el3": 1.0, "mauve": 0.0}
    paths = write_front(rows, objs, tmp_path / "out", ref)
    assert set(paths) == {"csv", "json", "png", "html"}
    for p in paths.values():
        assert p.exists() and p.stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["pareto_front.csv", "pareto_front.html", "pareto_front.json", "pareto_front.png"]  # no temp files left

    data = json.loads(paths["json"].read_text())
    assert data["objectives"] == [{"name": "el3", "mode": "min"}, {"name": "mauve", "mode": "max"}]
    assert data["reference"] == ref
    assert data["hypervolume"] == pytest.approx(hypervolume(rows, objs, ref))
    assert data["n_trials"] == 5 and data["n_valid"] == 4
    assert [r["trial_id"] for r in data["front"]] == ["t1", "t0", "t3"]
    assert data["front"][0]["params"] == {"gamma": 9.0, "lr": 2e-4, "policy": "reference"}

    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0].split(",")[:3] == ["trial_id", "el3", "mauve"]
    assert "params/gamma" in csv_lines[0] and len(csv_lines) == 4

    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = paths["html"].read_text()
    assert not re.search(r'<script[^>]*src="https?://', html)   # plotly.js embedded: works offline
    assert len(html) > 1_000_000 and "t1" in html and "gamma" in html

    # default reference; 3 objectives; second write overwrites in place
    objs3 = objs + [Objective("ppl", "min")]
    rows3 = [dict(r, ppl=i) for i, r in enumerate(rows)]
    paths3 = write_front(rows3, objs3, tmp_path / "out")
    data3 = json.loads(paths3["json"].read_text())
    assert set(data3["reference"]) == {"el3", "mauve", "ppl"}
    assert data3["reference"]["el3"] == 1.0
