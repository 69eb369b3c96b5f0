"""The sweep driver: Ray Tune + Optuna over a search space, every trial tracked in MLflow,
resumable after an interrupt.

The search space (orchestrator.space) is checked in full, with the base config's files
(trainables.preflight), before the sweep folder, the MLflow store or any run exists: a refused
sweep leaves nothing behind. Each trial is a Tune function trainable (orchestrator.trial);
OptunaSearch (orchestrator.search: TPE or NSGA-II, seeded, RDB storage beside the MLflow store)
proposes the trials inside a ConcurrencyLimiter; the end of the sweep (orchestrator.results)
writes the Pareto front and reconciles MLflow.

Sweep folder layout (DIR):

    space.yaml  sweep.json  summary.json  trials.csv  mlflow.db  mlartifacts/  optuna.db
    base_config.yaml
    original/metrics.json           the original model's evaluation (the "before")
    trials/<trial id>/              config.yaml, model/, train_result.json, metrics.json,
                                    result.json (objectives), status.json, attempts.log
    pareto/pareto_front.{csv,json,png,html}
    ray/tune/                       Tune's experiment (Tuner.restore on --resume)
    train/<trial id>/               Ray Train run storage (checkpoints; removed when done)

DIR may be a storage URI (`s3://...`, `gs://...`; orchestrator.storage): the same layout lives
there. The driver then works in a local folder it fills from the store on --resume and pushes to
it as it goes; trials write their folders to the store, Ray Train and Tune keep their storage in
it; the MLflow store must be a server every node reaches (MLFLOW_TRACKING_URI or tracking.uri).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import yaml
from ray import tune

from orchestrator.results import finalize
from orchestrator.search import build_searcher, optuna_storage_url
from orchestrator.space import Budget, SearchSpace
from orchestrator.storage import TRIAL_FILES, SweepStore
from orchestrator.tracking import (KIND_TAG, SWEEP_TAG, Tracker, default_tracking_uri, git_state,
                                   project_version)
from orchestrator.trial import SweepContext, run_trial, trial_config
from trainables.config import UnlearnConfig, dump_yaml, from_dict, read_yaml
from trainables.errors import InputError
from trainables.io import write_json, write_text
from trainables.preflight import preflight
from trainables.tree import numeric

# Parameters under these sections may name files (models, data): each of their values is
# preflighted like the base config.
FILE_SECTIONS = ("model", "data")


@dataclass
class SweepPaths:
    root: Path
    store: SweepStore | None = None  # None: the sweep folder is root itself

    @property
    def display(self) -> str:
        """Where the sweep lives, as the user named it (a folder or a storage URI)."""
        return self.store.display if self.store is not None else str(self.root)

    def where(self, rel: str) -> str:
        """The storage path of rel: a URI on remote storage (what Ray Train / Tune get)."""
        return self.store.where(rel) if self.store is not None else str(self.root / rel)

    def push(self, *rels: str) -> None:
        if self.store is not None:
            self.store.push(*rels)

    @property
    def state(self) -> Path:
        return self.root / "sweep.json"

    @property
    def space(self) -> Path:
        return self.root / "space.yaml"

    @property
    def tune(self) -> Path:
        return self.root / "ray" / "tune"

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def pareto(self) -> Path:
        return self.root / "pareto"

    @property
    def original(self) -> Path:
        return self.root / "original" / "metrics.json"


# --------------------------------------------------------------------------------------------
# Checks made before anything is written


def check_inputs(space: SearchSpace, log=print) -> str | None:
    """Everything that can be checked from the space, the base config and the files: the base
    config builds, the demo is built when the base uses it, and trainables.preflight passes on
    the base config and on every value of a parameter that may name a file. Returns the demo
    folder (None without the demo)."""
    try:
        base_cfg = from_dict(UnlearnConfig, space.base)
    except InputError as exc:
        raise InputError(f"base.{exc}") from None
    demo_dir = None
    if base_cfg.uses_demo():
        from trainables.demo import ensure_demo

        demo_dir = str(ensure_demo(log=log))
    try:
        preflight(trial_config(space, {}, demo_dir)[1])
    except InputError as exc:
        raise InputError(f"base.{exc}") from None
    for param in space.parameters:
        if param.key.split(".")[0] not in FILE_SECTIONS:
            continue
        for value in param.probes():
            try:
                preflight(trial_config(space, {param.key: value}, demo_dir)[1])
            except InputError as exc:
                raise InputError(f"parameters.{param.key}: value {value!r}: {exc}") from None
    return demo_dir


def check_remote_output(store: SweepStore, overwrite: bool, tracking_uri: str) -> None:
    """A fresh sweep on a storage URI: reachable, empty unless --overwrite; and a tracking
    store that every node reaches (a SQLite file on the driver's disk is not)."""
    from orchestrator.tracking import is_local_uri

    if is_local_uri(tracking_uri):
        raise InputError(f"--output: a sweep on {store.uri} runs its trials on other nodes, which cannot write "
                         f"to the MLflow store {tracking_uri}; set MLFLOW_TRACKING_URI (or tracking.uri) to a "
                         "tracking server, e.g. http://127.0.0.1:5000 on the head")
    try:
        empty = store.is_empty()
    except OSError as exc:
        raise InputError(f"--output: cannot list {store.uri} ({str(exc).splitlines()[0]})") from None
    if not empty and not overwrite:
        raise InputError(f"--output: {store.uri} exists and is not empty (pass --resume to continue that "
                         "sweep, or --overwrite to start again)")


def check_output(root: Path, overwrite: bool) -> None:
    """A fresh sweep's folder: creatable here, empty unless --overwrite."""
    existing = root
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"--output: {existing} is a file, not a folder")
    if existing == root and any(root.iterdir()):
        if not overwrite:
            raise InputError(f"--output: {root} exists and is not empty (pass --resume to continue that "
                             "sweep, or --overwrite to start again)")
        existing = root.parent  # it is removed and made again
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--output: {existing} is not writable")


def read_state(paths: SweepPaths, space: SearchSpace) -> dict:
    """sweep.json of the sweep to resume, after checking it is the same search space."""
    if not paths.state.is_file():
        raise InputError(f"--resume: {paths.display} holds no sweep to resume (no sweep.json)")
    try:
        state = json.loads(paths.state.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{paths.state}: not readable JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise InputError(f"{paths.state}: expected a JSON object, got {type(state).__name__}")
    if read_yaml(paths.space) != yaml.safe_load(space.dump()):  # one line if space.yaml is corrupt
        raise InputError(f"--resume: the search space differs from the one {paths.display} started with "
                         f"({paths.where('space.yaml')}); resume with the same file and overrides (or without SPACE)")
    return state


# --------------------------------------------------------------------------------------------
# The original model, MLflow, Tune


def evaluate_original(space: SearchSpace, demo_dir: str | None, paths: SweepPaths, log=print) -> dict:
    """The original model's evaluation (every trial's "before"), once per sweep, by Ray Train
    workers as many as a trial's, on the CPUs the concurrent trials will use; cached in the
    sweep folder."""
    from orchestrator.launcher import ensure_ray, fit_distributed

    if paths.original.is_file():
        return json.loads(paths.original.read_text())["metrics"]
    portable, cfg = trial_config(space, {}, demo_dir)
    log(f"evaluating the original model ({cfg.model.name_or_path}) ...")
    t0 = time.perf_counter()
    ensure_ray(log)
    cfg = with_idle_cpus(cfg, space.budget.max_concurrent_trials, ray.cluster_resources().get("CPU", 0.0))
    result = fit_distributed(cfg, None, storage_default=paths.where("train"), log=log, job={"train": False},
                             name="original")
    metrics = result["evaluation"]["original"]
    paths.original.parent.mkdir(parents=True, exist_ok=True)
    write_json(paths.original, {"model": portable.model.name_or_path, "metrics": metrics,
                                "seconds": time.perf_counter() - t0, "timings": result.get("timings", {})})
    paths.push("original")
    if paths.store is not None:
        paths.store.remove("train/original")
    else:
        shutil.rmtree(paths.root / "train" / "original", ignore_errors=True)
    return metrics


def with_idle_cpus(cfg, concurrent_trials: int, cluster_cpus: float):
    """`cfg` with each CPU worker given the CPUs of `concurrent_trials` trials (as many as the
    cluster's `cluster_cpus` hold): the original's evaluation runs before any trial, so their
    CPUs are idle (Ray sets a worker's torch threads to its CPUs; measured on the demo: 33 s on
    one, 23 s on two). Its figures do not depend on it (evaluation_key leaves resources out)."""
    import dataclasses

    sc = cfg.scaling
    per_worker = float(sc.resources_per_worker.get("CPU", 1.0))  # Ray's default: 1
    if sc.use_gpu or per_worker <= 0:
        return cfg
    cpus = max(per_worker, min(per_worker * concurrent_trials, cluster_cpus // sc.num_workers))
    if cpus == per_worker:
        return cfg
    scaling = dataclasses.replace(sc, resources_per_worker={**sc.resources_per_worker, "CPU": cpus})
    return dataclasses.replace(cfg, scaling=scaling)


def start_tracking(space: SearchSpace, paths: SweepPaths, state: dict, tracker: Tracker, log=print) -> None:
    """The experiment and the parent run (found again on --resume); fills `state`."""
    uri = tracker.uri
    local_store = uri.startswith("sqlite:")
    artifact_location = (paths.root / "mlartifacts").as_uri() if local_store else None
    experiment_name = space.tracking.experiment or space.name
    experiment_id = tracker.experiment(experiment_name, artifact_location)
    parent_id = state.get("parent_run_id")
    if parent_id and state.get("tracking_uri") == uri and tracker.run_exists(parent_id):
        tracker.client.update_run(parent_id, status="RUNNING")
        log(f"resuming sweep {space.name}: MLflow parent run {parent_id}")
    else:
        parent_id = tracker.create_run(experiment_id, space.name, {
            KIND_TAG: "sweep", SWEEP_TAG: paths.display, "undial.version": project_version(),
            **git_state(), "sampler": space.budget.sampler})
        state["parent_run_id"] = parent_id  # from here on a failed start has a run to undo
        tracker.log_params(parent_id, {
            "space.name": space.name, "sampler": space.budget.sampler, "seed": space.budget.seed,
            "num_samples": space.budget.num_samples, "max_concurrent_trials": space.budget.max_concurrent_trials,
            "objectives": ", ".join(f"{o.name} ({o.mode})" for o in space.objectives),
            "constraints": "; ".join(c.text for c in space.constraints) or "none",
            **{f"space.{p.key}": p.describe() for p in space.parameters}})
        write_text(paths.root / "base_config.yaml", dump_yaml(space.base))
        tracker.log_artifact(parent_id, paths.space)
        tracker.log_artifact(parent_id, paths.root / "base_config.yaml")
    state.update(parent_run_id=parent_id, experiment_id=experiment_id, experiment=experiment_name,
                 tracking_uri=uri, optuna_storage=optuna_storage_url(paths.root), study=space.name)


def undo_start(paths: SweepPaths, tracker: Tracker | None, state: dict, log=print) -> None:
    """A fresh sweep that failed before its first trial leaves nothing behind: its folder (and
    the MLflow store in it) goes; a parent run on a store elsewhere is deleted."""
    parent_id = state.get("parent_run_id")
    store_inside = tracker is None or tracker.uri == default_tracking_uri(paths.root)
    if paths.store is not None:
        try:
            paths.store.remove()  # what reached the storage URI
        except OSError as exc:
            log(f"warning: could not remove {paths.display}: {str(exc).splitlines()[0]}")
    if parent_id and not store_inside:
        try:
            tracker.client.delete_run(parent_id)
        except Exception as exc:  # the refusal itself matters more than this cleanup
            log(f"warning: could not delete MLflow run {parent_id}: {str(exc).splitlines()[0]}")
    shutil.rmtree(paths.root, ignore_errors=True)


def _reporter(space: SearchSpace):
    metric_columns = {"step": "step", "loss": "loss", "forget.ma": "forget MA", "retain.ppl": "ppl"}
    for o in space.objectives:
        metric_columns[o.name] = f"{o.name} {'↓' if o.mode == 'min' else '↑'}"
    for c in space.constraints:
        metric_columns.setdefault(c.metric, c.metric)
    params = {p.key: p.key.split(".")[-1] for p in space.parameters}
    return tune.CLIReporter(metric_columns=metric_columns, parameter_columns=params, max_report_frequency=30,
                            max_progress_rows=max(20, space.budget.num_samples), print_intermediate_tables=True)


def _trial_resources(budget: Budget) -> dict:
    out = {}
    for key, value in budget.trial_resources.items():
        out[key.lower() if key.upper() in ("CPU", "GPU") else key] = float(value)
    out.setdefault("cpu", 0.0)
    if not any(v > 0 for v in out.values()):
        # Ray refuses an all-zero bundle; a token of logical memory keeps the trial at 0 CPU so
        # that the Train workers get every core.
        out["memory"] = float(64 * 2**20)
    return out


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def _trial_dirname(trial) -> str:
    return trial.trial_id


class PushState(tune.Callback):
    """Remote storage: the driver's own files (Optuna's study, sweep.json) reach the store after
    each trial, so a driver stopped outright (`ray job stop`) leaves a resumable sweep."""

    def __init__(self, paths: SweepPaths):
        self.paths = paths

    def on_trial_complete(self, iteration, trials, trial, **info):
        try:
            self.paths.push("optuna.db", "sweep.json")
        except OSError as exc:  # the next trial's push retries; the end of the sweep pushes all
            print(f"warning: sweep state not saved to {self.paths.display}: {str(exc).splitlines()[0]}")

    on_trial_error = on_trial_complete


def build_tuner(space: SearchSpace, paths: SweepPaths, ctx: SweepContext, resume: bool, log=print) -> tune.Tuner:
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=ctx), _trial_resources(space.budget))
    tune_path = paths.where("ray/tune")
    if resume and tune.Tuner.can_restore(tune_path):
        log(f"resuming the Tune experiment at {tune_path}")
        return tune.Tuner.restore(tune_path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=build_searcher(space, optuna_storage_url(paths.root)),
                                    num_samples=space.budget.num_samples,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname,
                                    time_budget_s=space.budget.time_budget_s, reuse_actors=True),
        run_config=tune.RunConfig(name=paths.tune.name, storage_path=paths.where("ray"),
                                  failure_config=tune.FailureConfig(max_failures=space.budget.max_failures),
                                  callbacks=[PushState(paths)] if paths.store is not None else None,
                                  progress_reporter=_reporter(space), verbose=1))


# --------------------------------------------------------------------------------------------
# The driver


def run_sweep(space: SearchSpace, output: str | Path, resume: bool = False, overwrite: bool = False,
              log=print) -> dict:
    """Run (or resume) a sweep in the folder or storage URI `output`; returns the summary that
    summary.json holds."""
    t_start = time.time()
    store = SweepStore(output)
    paths = SweepPaths(store.local, store if store.remote else None)
    try:
        return _run_sweep(space, paths, resume, overwrite, t_start, log)
    finally:
        store.cleanup()  # a remote sweep's local folder: everything is in the store


def pull_driver_state(paths: SweepPaths) -> None:
    """--resume on remote storage: the driver's files, from the store into a clean local folder."""
    shutil.rmtree(paths.root, ignore_errors=True)
    paths.root.mkdir(parents=True)
    try:
        paths.store.pull("sweep.json", "space.yaml", "base_config.yaml", "original", "optuna.db")
    except OSError as exc:
        raise InputError(f"--resume: cannot read {paths.display} ({str(exc).splitlines()[0]})") from None


def pull_trials(paths: SweepPaths) -> None:
    """The trials' small files (not their models), which trials on other nodes wrote to the store."""
    for trial_id in paths.store.listdir("trials"):
        paths.store.pull(*(f"trials/{trial_id}/{name}" for name in TRIAL_FILES))



def _run_sweep(space: SearchSpace, paths: SweepPaths, resume: bool, overwrite: bool, t_start: float,
               log=print) -> dict:
    from orchestrator.launcher import ensure_ray

    remote = paths.store is not None
    tracking_uri = default_tracking_uri(paths.root, space.tracking.uri)
    # ---- every refusal before anything is written
    if remote:
        if resume:
            pull_driver_state(paths)
        else:
            check_remote_output(paths.store, overwrite, tracking_uri)
    state = read_state(paths, space) if resume else {}
    if not resume and not remote:
        check_output(paths.root, overwrite)
    demo_dir = check_inputs(space, log)

    if not resume:
        if remote:
            paths.store.remove()  # --overwrite (check_remote_output refused otherwise); a stale local folder
        elif paths.root.exists():
            shutil.rmtree(paths.root)  # --overwrite (check_output refused otherwise)
        paths.root.mkdir(parents=True)
        write_text(paths.space, space.dump())
    tracker = Tracker(tracking_uri)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")        # Tune's CLIReporter table, with our columns
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # step reports carry no objectives
    started_ray = not ray.is_initialized()
    try:
        try:
            start_tracking(space, paths, state, tracker, log)
            state["demo_dir"] = demo_dir
            state.setdefault("started", t_start)
            write_json(paths.state, state)
            paths.push("space.yaml", "base_config.yaml", "sweep.json")
            original = evaluate_original(space, demo_dir, paths, log)  # starts Ray (fit_distributed)
            tracker.log_metrics(state["parent_run_id"], {f"original.{k}": v for k, v in numeric(original).items()})
            tracker.log_artifact(state["parent_run_id"], paths.original, "original")
            ensure_ray(log)
            ctx = SweepContext(space=space, sweep_dir=paths.where(""), tracking_uri=tracker.uri,
                               experiment_id=state["experiment_id"], parent_run_id=state["parent_run_id"],
                               demo_dir=demo_dir, original=original)
            tuner = build_tuner(space, paths, ctx, resume, log)
        except BaseException:
            if not resume:
                undo_start(paths, tracker, state, log)
            raise
        log(f"sweep {space.name}: {space.budget.num_samples} trials, at most {space.budget.max_concurrent_trials} "
            f"at a time, sampler {space.budget.sampler} (seed {space.budget.seed}); MLflow {tracker.uri}")
        grid = tuner.fit()
        if remote:
            pull_trials(paths)
        summary = finalize(space, paths, tracker, state, grid, original, log=log)
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    summary["wall_seconds"] = time.time() - t_start
    write_json(paths.root / "summary.json", summary)
    paths.push("summary.json", "trials.csv", "pareto", "sweep.json", "optuna.db")
    return summary
