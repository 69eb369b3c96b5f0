"""A sweep's results: one row per trial from its trial files (and Tune's ResultGrid), the
Pareto front and its reference point, trials.csv, MLflow reconciliation at the end of a sweep
and the console summary.

Light (no ray / torch / mlflow at import): `undial pareto` reads a sweep folder through
`sweep_front` while the sweep may still be running.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from orchestrator.objectives import metric_value
from orchestrator.pareto import format_front, front_table, hypervolume, reference_point, write_front
from orchestrator.space import SearchSpace, read_saved_space
from trainables.errors import InputError
from trainables.io import write_json, write_text

if TYPE_CHECKING:
    from orchestrator.sweep import SweepPaths
    from orchestrator.tracking import Tracker

STATUSES = ("ok", "infeasible", "failed", "unfinished")


def root_error(exc: BaseException) -> str:
    """`Type: first line` of the error a trial died of (Ray's wrappers peeled off)."""
    from orchestrator.launcher import _unwrap_worker_error

    root = _unwrap_worker_error(exc)
    text = str(root).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(root).__name__}: {first}" if first else type(root).__name__


# --------------------------------------------------------------------------------------------
# Trials and the front


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


ORPHANED = "orphaned"


def collect_trials(space: SearchSpace, sweep_dir: Path, tune_status: Mapping[str, dict] | None = None) -> list[dict]:
    """One row per trial: objectives, feasibility, status, params, MLflow run id. Without Tune's
    status (a sweep folder read as it is) every trial folder but the orphaned ones."""
    rows = []
    trial_ids = list(tune_status) if tune_status is not None else \
        sorted(p.name for p in (sweep_dir / "trials").glob("*") if p.is_dir())
    for trial_id in trial_ids:
        tdir = sweep_dir / "trials" / trial_id
        status = _read_json(tdir / "status.json") or {}
        if tune_status is None and status.get("status") == ORPHANED:
            continue
        result = _read_json(tdir / "result.json")
        tune_info = (tune_status or {}).get(trial_id, {})
        row: dict[str, Any] = {"trial_id": trial_id}
        params = status.get("params") or tune_info.get("config") or {}
        if result is not None and not tune_info.get("error"):
            objectives = result["objectives"]
            for o in space.objectives:
                row[o.name] = objectives.get(o.name)
            for c in space.constraints:
                row.setdefault(c.metric, objectives.get(c.metric))
            row["report"] = {name: objectives.get(name) for name in space.report}
            row["feasible"] = bool(objectives.get("feasible", True))
            row["status"] = "ok" if row["feasible"] else "infeasible"
        else:
            for o in space.objectives:
                row[o.name] = None
            row["feasible"] = False
            if tune_info.get("error") or status.get("status") == "failed":
                row["status"] = "failed"
                row["error"] = status.get("error") or tune_info.get("error")
            else:
                row["status"] = "unfinished"
        row["run_id"] = status.get("run_id") or tune_info.get("run_id")
        row["params"] = params
        rows.append(row)
    return rows


def mark_orphans(paths: SweepPaths, known: set[str]) -> list[str]:
    """Mark the trial folders Tune does not know as orphaned (status.json) and return their ids.
    A trial that started after Tune's last experiment snapshot is unknown to a resumed Tune, which
    starts a new trial in its place; its folder stays behind, and `undial pareto DIR` (which reads
    the folders) would count it as an unfinished trial the sweep's own summary does not have."""
    names = {p.name for p in (paths.root / "trials").glob("*") if p.is_dir()}
    if paths.store is not None:
        names |= set(paths.store.listdir("trials"))
    marked = []
    for trial_id in sorted(names - known):
        rel = f"trials/{trial_id}/status.json"
        if paths.store is not None and paths.store.exists(rel):
            paths.store.pull(rel)
        status = _read_json(paths.root / rel) or {}
        if status.get("status") == ORPHANED:
            continue
        write_json(paths.root / rel, {**status, "status": ORPHANED, "was": status.get("status"),
                                      "why": "started before an interrupt, unknown to the resumed Tune run"})
        paths.push(rel)
        marked.append(trial_id)
    return marked


def front_rows(space: SearchSpace, rows: list[dict]) -> list[dict]:
    """Rows for the Pareto front: infeasible / failed rows lose their objective values (on no
    front, no hypervolume) but stay in the count."""
    out = []
    for row in rows:
        r = {"trial_id": row["trial_id"]}
        for o in space.objectives:
            r[o.name] = row.get(o.name) if row["status"] == "ok" else None
        if space.report:
            r["report"] = dict(row.get("report") or {})
        r["params"] = row.get("params") or {}
        r["run_id"] = row.get("run_id")
        out.append(r)
    return out


def count_statuses(rows: list[dict]) -> dict[str, int]:
    return {s: sum(r["status"] == s for r in rows) for s in STATUSES}


def tune_status(grid) -> dict[str, dict]:
    """{trial id: {error, config, run_id}} from a ray.tune.ResultGrid (its public Result fields)."""
    out = {}
    for result in grid:
        path = Path(result.path) if result.path else None
        trial_id = (result.metrics or {}).get("trial_id") or (path.name if path else None)
        if trial_id is None:
            continue
        err = result.error
        out[trial_id] = {"error": root_error(err) if err is not None else None, "config": dict(result.config or {}),
                         "run_id": (result.metrics or {}).get("mlflow_run_id")}
    return out


def space_reference(space: SearchSpace, frows: list[dict]) -> dict:
    """The hypervolume reference point: an objective's `reference` from the space, else the
    worst possible value of objectives the metric table bounds (el*, mauve, ...), else derived
    from the trials (pareto.reference_point)."""
    objs = space.objective_list
    given = {o.name: o.reference for o in space.objectives if o.reference is not None}
    rest = [o for o in objs if o.name not in given]
    ref = dict(given)
    if rest:
        valid = [r for r in frows if all(r.get(o.name) is not None for o in rest)]
        try:
            ref.update(reference_point(rest, valid or None))
        except InputError:
            ref.update({o.name: 0.0 for o in rest})
    return {o.name: ref[o.name] for o in objs}


def sweep_front(sweep_dir: str | Path) -> tuple[SearchSpace, list[dict], list[dict]]:
    """(space, rows, front rows) of a sweep folder, from its trial files (works mid-sweep)."""
    root = Path(sweep_dir)
    if not (root / "space.yaml").is_file():
        raise InputError(f"SWEEP: {root} is not a sweep folder (no space.yaml)")
    space = read_saved_space(root / "space.yaml")
    rows = collect_trials(space, root)
    return space, rows, front_rows(space, rows)


def write_trials_csv(path: Path, space: SearchSpace, rows: list[dict]) -> None:
    params: list[str] = []
    for r in rows:
        params += [k for k in r["params"] if k not in params]
    objective_names = {o.name for o in space.objectives}
    shown = [c.metric for c in space.constraints if c.metric not in objective_names]
    shown += [name for name in space.report if name not in shown]
    cols = ["trial_id", "status"] + [o.name for o in space.objectives] + shown + ["run_id"] + params + ["error"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        values = {**(r.get("report") or {}), **r}
        w.writerow([values.get(c) if c not in params else r["params"].get(c) for c in cols])
    write_text(path, buf.getvalue())


# --------------------------------------------------------------------------------------------
# The end of a sweep: files, MLflow, printout


def reconcile_runs(space: SearchSpace, paths: SweepPaths, tracker: Tracker, state: dict, rows: list[dict],
                   front_ids: set[str]) -> None:
    """Bring the child runs in line with the trial rows: `pareto` / `feasible` tags, the models
    of the front, FAILED for failed trials (a run made for one that died before opening its
    own), KILLED for orphans; fills each row's run_id."""
    from orchestrator.tracking import PARETO_TAG, TRIAL_TAG

    parent_id, experiment_id = state["parent_run_id"], state["experiment_id"]
    children = {r.data.tags.get(TRIAL_TAG): r for r in tracker.child_runs(experiment_id, parent_id)}
    for row in rows:
        run = children.get(row["trial_id"])
        if run is None and row["status"] == "failed":  # died before it could open its run
            run_id = tracker.child_run(experiment_id, parent_id, row["trial_id"], f"trial_{row['trial_id']}")
            tracker.log_params(run_id, row["params"])
            tracker.fail(run_id, row.get("error") or "failed")
            row["run_id"] = run_id
            continue
        if run is None:
            continue
        run_id = run.info.run_id
        row["run_id"] = run_id
        if row["status"] == "failed":
            if run.info.status != "FAILED":
                tracker.fail(run_id, row.get("error") or "failed")
            continue
        if row["status"] in ("ok", "infeasible"):
            on_front = row["trial_id"] in front_ids
            tracker.set_tags(run_id, {PARETO_TAG: str(on_front).lower(), "feasible": str(row["feasible"]).lower()})
            model_rel = f"trials/{row['trial_id']}/model"
            model_dir = paths.root / model_rel
            if on_front and space.tracking.log_models == "pareto" and run.data.tags.get("model_logged") != "true":
                if paths.store is not None and paths.store.exists(model_rel):
                    paths.store.pull(model_rel)  # written on another node; removed again below
                if model_dir.is_dir():
                    tracker.log_artifacts(run_id, model_dir, "model")
                    tracker.set_tags(run_id, {"model_logged": "true"})
                if paths.store is not None:
                    shutil.rmtree(model_dir, ignore_errors=True)
            if run.info.status != "FINISHED":
                tracker.finish(run_id)
    known = {r["trial_id"] for r in rows}
    for trial_id, run in children.items():
        if trial_id not in known and run.info.status == "RUNNING":
            tracker.set_tags(run.info.run_id, {"orphaned": "true"})
            tracker.finish(run.info.run_id, "KILLED")


def close_parent(tracker: Tracker, parent_id: str, rows: list[dict], counts: dict, front: list[dict], hv: float,
                 files: Mapping[str, Path], trials_csv: Path, complete: bool) -> None:
    tracker.log_metrics(parent_id, {"hypervolume": hv, "n_trials": len(rows), "n_completed": counts["ok"],
                                    "n_infeasible": counts["infeasible"], "n_failed": counts["failed"],
                                    "n_front": len(front)})
    for path in files.values():
        tracker.log_artifact(parent_id, path, "pareto")
    tracker.log_artifact(parent_id, trials_csv)
    tracker.finish(parent_id, "FINISHED" if complete else "KILLED")


def best_on_front(space: SearchSpace, front: list[dict]) -> dict[str, float]:
    best = {}
    for o in space.objectives:
        vals = [r[o.name] for r in front if r.get(o.name) is not None]
        if vals:
            best[o.name] = min(vals) if o.mode == "min" else max(vals)
    return best


def summary_text(space: SearchSpace, paths: SweepPaths, state: dict, rows: list[dict], frows: list[dict],
                 front: list[dict], reference: dict, counts: dict, orig: dict, best: dict) -> str:
    """What the sweep prints at its end: the front, failures, where everything is."""
    from orchestrator.tracking import ui_command

    lines = ["", format_front(frows, space.objective_list, reference)]
    if counts["infeasible"]:
        lines.append(f"{counts['infeasible']} trial(s) violate a constraint "
                     f"({'; '.join(c.text for c in space.constraints)}) and are on no front")
    if counts["failed"]:
        lines.append(f"{counts['failed']} trial(s) failed: " + "; ".join(
            f"{r['trial_id']}: {r.get('error')}" for r in rows if r["status"] == "failed"))
    lines.append("original model: " + ", ".join(f"{k} {v:.4f}" for k, v in orig.items()) +
                 ("   best on the front: " + ", ".join(f"{k} {v:.4f}" for k, v in best.items()) if best else ""))
    if front:
        lines.append("MLflow runs of the front (undial export RUN_ID --output FILE.yaml "
                     f"--tracking-uri {state['tracking_uri']}):")
        lines += [f"  {r['trial_id']}  {r['run_id']}" for r in front]
    lines.append(f"artifacts: {paths.display}  (pareto/, trials/, trials.csv, summary.json)")
    lines.append(f"MLflow:    experiment '{state['experiment']}', parent run {state['parent_run_id']}")
    lines.append(f"           {ui_command(state['tracking_uri'])}   (children: tags.pareto = 'true')")
    lines.append(f"Optuna:    optuna-dashboard {state['optuna_storage']}")
    return "\n".join(lines)


def finalize(space: SearchSpace, paths: SweepPaths, tracker: Tracker, state: dict, grid, original: dict,
             log=print) -> dict:
    """The front, its files and hypervolume on the parent run; `pareto` tags and Pareto-optimal
    models on the child runs; failed trials marked FAILED; the final printout. Returns the
    summary (summary.json)."""
    rows = collect_trials(space, paths.root, tune_status(grid))
    orphans = mark_orphans(paths, {r["trial_id"] for r in rows})
    if orphans:
        log(f"{len(orphans)} trial folder(s) left by the interrupt, unknown to Tune, marked orphaned: "
            f"{', '.join(orphans)}")
    objs = space.objective_list
    frows = front_rows(space, rows)
    reference = space_reference(space, frows)
    front = front_table(frows, objs)
    hv = hypervolume(frows, objs, reference)
    files = write_front(frows, objs, paths.pareto, reference) if front else {}
    write_trials_csv(paths.root / "trials.csv", space, rows)

    reconcile_runs(space, paths, tracker, state, rows, {r["trial_id"] for r in front})
    run_ids = {r["trial_id"]: r.get("run_id") for r in rows}
    for r in front:
        r["run_id"] = run_ids.get(r["trial_id"]) or r.get("run_id")
    counts = count_statuses(rows)
    complete = counts["unfinished"] == 0 and len(rows) >= space.budget.num_samples
    close_parent(tracker, state["parent_run_id"], rows, counts, front, hv, files, paths.root / "trials.csv",
                 complete)

    best = best_on_front(space, front)
    orig = {o.name: metric_value(o.metric, original, original) for o in space.objectives}
    log(summary_text(space, paths, state, rows, frows, front, reference, counts, orig, best))
    return {"name": space.name, "sweep_dir": paths.display, "trials": len(rows), "counts": counts,
            "objectives": [{"name": o.name, "mode": o.mode} for o in space.objectives],
            "reference": reference, "hypervolume": hv, "front": front, "original": orig, "best": best,
            "tracking_uri": state["tracking_uri"], "parent_run_id": state["parent_run_id"],
            "pareto_files": {k: str(v) for k, v in files.items()}, "complete": complete}
