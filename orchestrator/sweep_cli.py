"""`undial sweep`, `undial pareto`, `undial export`: the sweep commands of the CLI.

    undial sweep SPACE.yaml | --demo [key=value ...] [--output DIR] [--resume] [--overwrite]
    undial pareto SWEEP_DIR [--json]
    undial export RUN_ID --output FILE.yaml [--tracking-uri URI | --sweep DIR] [--model DIR]

--output (sweep) and SWEEP_DIR may be storage URIs (s3://..., gs://...; orchestrator.storage).

Overrides address the search space (`budget.num_samples=4`, `parameters.train.lr.high=3e-4`)
or, when the key starts with a config section (`train.max_steps=40`), the base run config.
Heavy imports (Ray, MLflow, torch) happen inside the commands, so `undial --help` stays quick;
`pareto` and `export` never import torch, transformers or Ray (tests/test_cli_imports.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from orchestrator.storage import is_remote
from trainables.errors import InputError


def _space_and_overrides(args) -> tuple[str | None, list[str]]:
    space = args.space
    overrides = list(args.overrides)
    if space is not None and "=" in space and not space.endswith((".yaml", ".yml")):
        overrides.insert(0, space)
        space = None
    if getattr(args, "demo", False):
        if space is not None:
            raise InputError("give either SPACE.yaml or --demo, not both")
        from orchestrator.unlearn import DEMO_SPACE

        space = str(DEMO_SPACE)
    return space, overrides


def _saved_space(output: str):
    """The search space a sweep in `output` (a folder or a storage URI) started with."""
    import tempfile

    from orchestrator.space import read_saved_space
    from orchestrator.storage import SweepStore

    with tempfile.TemporaryDirectory(prefix="undial-space-") as tmp:
        store = SweepStore(output, local=tmp if is_remote(output) else None)
        try:
            store.pull("space.yaml")
        except OSError as exc:
            raise InputError(f"--resume: cannot read {output} ({str(exc).splitlines()[0]})") from None
        saved = store.local / "space.yaml"
        if not saved.is_file():
            raise InputError(f"--resume: {output} holds no sweep to resume (no space.yaml)")
        return read_saved_space(saved)


def _pulled_sweep(sweep_dir: str, tmp: str) -> str:
    """A local copy of a remote sweep's space and trial files (not the models), for `pareto`."""
    from orchestrator.storage import TRIAL_FILES, SweepStore

    store = SweepStore(sweep_dir, local=tmp)
    try:
        store.pull("space.yaml")
        for trial_id in store.listdir("trials"):
            store.pull(*(f"trials/{trial_id}/{name}" for name in TRIAL_FILES))
    except OSError as exc:
        raise InputError(f"SWEEP: cannot read {sweep_dir} ({str(exc).splitlines()[0]})") from None
    return tmp


def cmd_sweep(args) -> int:
    from orchestrator.space import load_space

    space_path, overrides = _space_and_overrides(args)
    if space_path is None:
        if not (args.resume and args.output):
            raise InputError("SPACE.yaml: a search space file is needed (or --resume --output DIR)")
        if overrides:
            raise InputError("overrides: give the space file too when overriding on --resume")
        space = _saved_space(args.output)
    else:
        space = load_space(space_path, overrides)
    output = args.output or str(Path("runs") / space.name)
    from orchestrator.sweep import run_sweep  # Ray: only once the space is known to be valid

    summary = run_sweep(space, output, resume=args.resume, overwrite=args.overwrite)
    where = f"{output.rstrip('/')}/summary.json" if is_remote(output) else Path(output) / "summary.json"
    print(f"wall time {summary['wall_seconds'] / 60:.1f} min; summary in {where}")
    return 0 if summary["counts"]["ok"] + summary["counts"]["infeasible"] > 0 else 1


def cmd_pareto(args) -> int:
    from orchestrator.pareto import format_front, front_table
    from orchestrator.results import count_statuses, space_reference, sweep_front

    if is_remote(args.sweep_dir):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="undial-pareto-") as tmp:
            space, rows, frows = sweep_front(_pulled_sweep(args.sweep_dir, tmp))
    else:
        space, rows, frows = sweep_front(args.sweep_dir)
    objs = space.objective_list
    reference = space_reference(space, frows)
    if args.json:
        front = front_table(frows, objs)
        print(json.dumps({"objectives": [{"name": o.name, "mode": o.mode} for o in objs], "reference": reference,
                          "front": front, "trials": rows}, indent=2, default=str))
        return 0
    print(format_front(frows, objs, reference))
    counts = count_statuses(rows)
    extra = [f"{n} {s}" for s, n in counts.items() if n and s != "ok"]
    if extra:
        print("also: " + ", ".join(extra))
    front = front_table(frows, objs)
    if front:
        print("MLflow runs: " + ", ".join(f"{r['trial_id']}={r.get('run_id')}" for r in front))
    return 0


def cmd_export(args) -> int:
    from orchestrator.tracking import export_config

    uri = args.tracking_uri
    if uri is None and args.sweep:
        state = Path(args.sweep) / "sweep.json"
        if state.is_file():
            try:
                uri = json.loads(state.read_text()).get("tracking_uri")
            except (ValueError, AttributeError):
                raise InputError(f"--sweep: {state} is not readable sweep state (not a JSON object)") from None
        else:
            uri = f"sqlite:///{(Path(args.sweep) / 'mlflow.db').resolve()}"
    path = export_config(args.run_id, args.output, uri or os.environ.get("MLFLOW_TRACKING_URI"),
                         overwrite=args.overwrite)
    print(f"wrote {path}; run it with: undial unlearn {path} --output DIR")
    if args.model:
        from orchestrator.tracking import fetch_model

        where = fetch_model(args.run_id, args.model, uri or os.environ.get("MLFLOW_TRACKING_URI"))
        print(f"copied the trial's selected model from {where} to {args.model}")
    return 0


def add_sweep_commands(sub) -> None:
    sweep = sub.add_parser("sweep", help="multi-objective sweep (Ray Tune + Optuna), tracked in MLflow",
                           description="Run a search space: trials on Ray Train, Optuna proposing, MLflow "
                                       "recording every trial and the Pareto front.")
    sweep.add_argument("space", nargs="?", metavar="SPACE.yaml", help="a search space (search_spaces/*.yaml)")
    sweep.add_argument("overrides", nargs="*", metavar="key=value",
                       help="e.g. budget.num_samples=4 train.max_steps=40 parameters.train.lr.high=3e-4")
    sweep.add_argument("--demo", action="store_true",
                       help="the built-in offline demo's search space (search_spaces/demo.yaml, shipped with the package)")
    sweep.add_argument("--output", help="the sweep folder (default: runs/<space name>)")
    sweep.add_argument("--resume", action="store_true", help="continue the interrupted sweep in --output")
    sweep.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    sweep.set_defaults(func=cmd_sweep)

    pareto = sub.add_parser("pareto", help="print a sweep's Pareto front")
    pareto.add_argument("sweep_dir", metavar="SWEEP_DIR")
    pareto.add_argument("--json", action="store_true", help="print JSON (front and every trial)")
    pareto.set_defaults(func=cmd_pareto, light=True)  # no torch / transformers / ray: see cli.main

    export = sub.add_parser("export", help="write a trial's config (an MLflow run) as an `undial unlearn` config")
    export.add_argument("run_id", metavar="RUN_ID", help="the trial's MLflow run id")
    export.add_argument("--output", required=True, metavar="FILE.yaml")
    export.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI)")
    export.add_argument("--sweep", metavar="DIR", help="the sweep folder: its MLflow store")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    export.add_argument("--model", metavar="DIR",
                        help="also copy the trial's selected model (from the sweep's folder or storage URI) to DIR")
    export.set_defaults(func=cmd_export, light=True)
