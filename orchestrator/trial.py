"""One trial of a sweep: a Tune function trainable (`run_trial`) that builds the trial's
config, fits a Ray Train TorchTrainer whose workers train, evaluate the selected model where it
is and save it (Train's reports reach Tune through TuneReportCallback and MLflow through
StepLogger), and reports the objectives. The trial's own process loads no model.

Trial folder (DIR/trials/<trial id>/): config.yaml, model/, train_result.json, metrics.json,
result.json (objectives), status.json, attempts.log, error.txt. Ray Train's run storage is
DIR/train/<trial id>/ (checkpoints; removed when the trial is done).

On remote storage (DIR a storage URI, orchestrator.storage) the trial, which may run on any node,
works in a private local folder and pushes every file it writes to DIR/trials/<trial id>/;
what an earlier attempt left there is pulled first. Ray Train's run storage is then DIR/train.

Imported only where Ray runs (the sweep driver, Tune's trial actors, Train's controller).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import ray.train
import ray.tune
from ray.train import UserCallback
from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator.objectives import final_metrics
from orchestrator.results import root_error
from orchestrator.space import SearchSpace, apply_params
from orchestrator.storage import SweepStore, is_remote
from trainables.config import UnlearnConfig, dump_yaml, from_dict, resolve_demo_paths
from trainables.io import write_json, write_text
from trainables.models import NO_MODEL_LOADS
from trainables.tree import numeric


class StepLogger(UserCallback):
    """A Ray Train callback (it runs in the Train controller): every report of rank 0 goes
    to the trial's MLflow run as `train.<name>` metrics at its step, in batches."""

    SKIP = ("step", "final", "checkpoint_path")

    def __init__(self, tracking_uri: str, run_id: str, flush_every: int = 25):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.flush_every = flush_every
        self._rows: list[tuple[str, float, int, int]] = []
        self._tracker = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tracker"] = None
        state["_rows"] = []
        return state

    def after_report(self, run_context, metrics, checkpoint):
        m = metrics[0] if metrics else {}
        step = int(m.get("step", 0) or 0)
        now = int(time.time() * 1000)
        for key, value in m.items():
            if key in self.SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self._rows.append((f"train.{key}", float(value), now, step))
        if m.get("final") or "forget.ma" in m or len(self._rows) >= self.flush_every:  # an evaluation: now
            self.flush()

    def after_exception(self, run_context, worker_exceptions):
        self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        try:
            from orchestrator.tracking import Tracker

            if self._tracker is None:
                self._tracker = Tracker(self.tracking_uri)
            self._tracker.log_metric_rows(self.run_id, rows)
        except Exception as exc:  # tracking must never break training
            print(f"warning: MLflow step metrics not logged: {str(exc).splitlines()[0]}")




@dataclass
class SweepContext:
    """What every trial needs from the driver (travels through tune.with_parameters)."""
    space: SearchSpace
    sweep_dir: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    demo_dir: str | None
    original: dict



def trial_config(space: SearchSpace, params: Mapping[str, Any], demo_dir: str | None
                 ) -> tuple[UnlearnConfig, UnlearnConfig]:
    """(portable config, runnable config) of a trial: the portable one keeps "demo:" paths."""
    plain = apply_params(space.base, params)
    portable = from_dict(UnlearnConfig, plain)
    if demo_dir and portable.uses_demo():
        return portable, from_dict(UnlearnConfig, resolve_demo_paths(plain, Path(demo_dir)))
    return portable, portable


def _final_checkpoint(run_dir: Path) -> Path | None:
    """A finished Train run's last checkpoint (model/ + train_result.json), if one was saved."""
    if not run_dir.is_dir():
        return None
    found = [p.parent for p in run_dir.glob("checkpoint_*/train_result.json") if (p.parent / "model").is_dir()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _final_checkpoint_in(store: SweepStore, trial_id: str):
    """The finished Train run's last checkpoint in the sweep's storage, as a ray.train.Checkpoint."""
    if not store.remote:
        final = _final_checkpoint(store.local / "train" / trial_id)
        return ray.train.Checkpoint.from_directory(str(final)) if final is not None else None
    rel = f"train/{trial_id}"
    found = [name for name in store.listdir(rel) if name.startswith("checkpoint_")
             and store.exists(f"{rel}/{name}/train_result.json") and store.exists(f"{rel}/{name}/model")]
    return ray.train.Checkpoint(path=store.where(f"{rel}/{max(found)}")) if found else None  # checkpoint_00000N


def train_trial(cfg: UnlearnConfig, trial_dir: Path, sweep: SweepContext, trial_id: str, run_id: str,
                log=print, store: SweepStore | None = None) -> dict:
    """Fit the trial's TorchTrainer, whose workers train, evaluate the selected model and save it
    (or pick up what an interrupted attempt finished). This process loads no model."""
    from orchestrator.launcher import build_trainer, fetch_result

    store = store or SweepStore(sweep.sweep_dir)
    rel = f"trials/{trial_id}"
    done = trial_dir / "train_result.json"
    model_dir = trial_dir / "model"
    has_model = store.exists(f"{rel}/model") if store.remote else model_dir.is_dir()
    if done.is_file() and has_model:
        log(f"trial {trial_id}: training finished in an earlier attempt")
        return json.loads(done.read_text())
    storage = store.where("train")
    final = _final_checkpoint_in(store, trial_id)
    if final is None:
        callbacks = [TuneReportCallback(), StepLogger(sweep.tracking_uri, run_id)]
        # The workers evaluate the selected model where it is; the original's figures (thresholds,
        # ratios) come from the sweep's one evaluation of it.
        job = {"evaluate_final": True, "original": sweep.original}
        trainer = build_trainer(cfg, model_dir, storage, name=trial_id, callbacks=callbacks, job=job)
        result = trainer.fit()
        checkpoint = result.checkpoint
    else:
        log(f"trial {trial_id}: using the final checkpoint of an earlier attempt")
        checkpoint = final
    train_result = fetch_result(checkpoint, model_dir)
    write_json(done, train_result)
    store.push(f"{rel}/model", f"{rel}/train_result.json")  # the model first: `done` means both are there
    store.remove(f"train/{trial_id}")  # checkpoints hold optimizer state: disk
    return train_result


def backfill_curve(tracker, run_id: str, train_result: Mapping) -> int:
    """Log what the training result holds per step (train_result["curve"]: loss, grad_norm,
    lr, ... every step; train_result["history"]: the evaluations, step 0 included) for the
    (metric, step) pairs StepLogger did not log live: Ray Train reports only every log_every /
    eval step, and an attempt that found its training done reports nothing. Returns the number
    of values added."""
    from orchestrator.tracking import retry

    points: dict[tuple[str, int], float] = {}
    for series in (train_result.get("curve") or [], train_result.get("history") or []):
        for point in series:
            step = int(point.get("step", 0))
            for key, value in point.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and math.isfinite(value):
                    points.setdefault((f"train.{key}", step), float(value))
    if not points:
        return 0
    have: dict[str, set[int]] = {}
    for key in {k for k, _ in points}:
        have[key] = {m.step for m in retry(tracker.client.get_metric_history, run_id, key)}
    now = int(time.time() * 1000)
    rows = [(key, value, now, step) for (key, step), value in sorted(points.items(), key=lambda kv: kv[0][1])
            if step not in have[key]]
    if rows:
        tracker.log_metric_rows(run_id, rows)
    return len(rows)


def _tune_report(final: Mapping, run_id: str, steps: int | None) -> dict:
    out: dict[str, Any] = {}
    for key, value in final.items():
        if key == "feasible":
            out[key] = int(bool(value))
        elif key == "constraint_violations":
            out[key] = [float(v) for v in value]
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    out["mlflow_run_id"] = run_id
    out["evaluated"] = 1
    if steps is not None:
        out["step"] = steps
    return out


def run_trial(config: dict, sweep: SweepContext) -> None:
    """One trial: config -> TorchTrainer fit (training and evaluation in the workers) ->
    objectives to Tune and MLflow."""
    t_trial = time.perf_counter()
    os.environ[NO_MODEL_LOADS] = "1"  # this process only coordinates: a model load here is a bug

    tctx = ray.tune.get_context()
    trial_id, trial_name = tctx.get_trial_id(), tctx.get_trial_name()
    params = {k: v for k, v in config.items()}
    space = sweep.space
    # On remote storage: this process's own folder (any node); the trial's files live in the store.
    local = tempfile.mkdtemp(prefix="undial-trial-") if is_remote(sweep.sweep_dir) else None
    store = SweepStore(sweep.sweep_dir, local=local)
    try:
        _run_trial(config, sweep, store, trial_id, trial_name, params, space, t_trial)
    finally:
        store.cleanup()


def _run_trial(config: dict, sweep: SweepContext, store: SweepStore, trial_id: str, trial_name: str,
               params: dict, space: SearchSpace, t_trial: float) -> None:
    from orchestrator.tracking import MODEL_TAG, Tracker

    rel = f"trials/{trial_id}"
    store.pull(f"{rel}/result.json", f"{rel}/attempts.log", f"{rel}/train_result.json")
    trial_dir = store.local / rel
    trial_dir.mkdir(parents=True, exist_ok=True)
    result_file = trial_dir / "result.json"
    with open(trial_dir / "attempts.log", "a") as fh:  # one line per start of this trial
        fh.write(json.dumps({"time": time.time(), "pid": os.getpid(),
                             "kind": "report-saved" if result_file.is_file() else "run"}) + "\n")
    push = lambda *names: store.push(*(f"{rel}/{n}" for n in names))  # noqa: E731
    push("attempts.log")
    log = lambda msg: print(f"[{trial_name}] {msg}", flush=True)  # noqa: E731

    tracker = Tracker(sweep.tracking_uri)
    run_id = tracker.child_run(sweep.experiment_id, sweep.parent_run_id, trial_id, trial_name,
                               tags={"tune_trial_name": trial_name})
    status = {"trial_id": trial_id, "trial_name": trial_name, "run_id": run_id, "params": params,
              "status": "running"}
    write_json(trial_dir / "status.json", status)
    push("status.json")
    try:
        if result_file.is_file():  # finished before the driver could record it (a resumed sweep)
            saved = json.loads(result_file.read_text())
            log("finished in an earlier attempt; reporting its result")
            status["status"] = "finished"
            write_json(trial_dir / "status.json", status)
            push("status.json")
            tracker.finish(run_id)
            ray.tune.report(_tune_report(saved["objectives"], run_id, saved.get("steps")))
            return
        portable, cfg = trial_config(space, params, sweep.demo_dir)
        write_text(trial_dir / "config.yaml", dump_yaml(portable))
        push("config.yaml")
        derived = {"lora.enabled": cfg.lora.enabled, "finetuning": f"lora r={cfg.lora.rank}" if cfg.lora.enabled
                   else "full"}
        tracker.log_params(run_id, {**params, **derived})
        tracker.log_artifact(run_id, trial_dir / "config.yaml")
        log(f"training: {', '.join(f'{k}={v}' for k, v in params.items())}")
        t_train = time.perf_counter()
        train_result = train_trial(cfg, trial_dir, sweep, trial_id, run_id, log, store)
        t_trained = time.perf_counter()
        tracker.set_tags(run_id, {MODEL_TAG: store.where(f"{rel}/model")})  # `undial export --model DIR`
        try:
            backfill_curve(tracker, run_id, train_result)
        except Exception as exc:  # tracking must not fail the trial
            log(f"warning: per-step metrics not logged: {str(exc).splitlines()[0]}")
        after = train_result["evaluation"]["unlearned"]
        final = final_metrics(space, after, sweep.original)
        training = {k: train_result.get(k) for k in ("best_step", "steps", "stopped", "seconds")}
        # Where the slot goes around the workers' own timings: this process's preparation (MLflow
        # run, config), the Ray Train run (worker group start, result transfer) and what follows.
        timings = {**train_result.get("timings", {}), "before_train_s": t_train - t_trial,
                   "train_call_s": t_trained - t_train, "trial_s": time.perf_counter() - t_trial}
        training["timings"] = timings
        write_json(trial_dir / "metrics.json", {"before": sweep.original, "after": after, "training": training})
        push("metrics.json")
        tracker.log_artifact(run_id, trial_dir / "metrics.json")
        logged = {k: v for k, v in final.items() if k not in ("constraint_violations", "feasible")}
        logged.update({f"after.{k}": v for k, v in numeric(after).items()})
        logged.update({f"training.{k}": v for k, v in numeric(training).items()})
        logged["feasible"] = float(bool(final["feasible"]))
        for i, v in enumerate(final["constraint_violations"]):
            logged[f"constraint_violation.{i}"] = v if math.isfinite(v) else 1e30
        tracker.log_metrics(run_id, logged, step=int(train_result.get("steps") or 0))
        if space.tracking.log_models == "all":
            if not (trial_dir / "model").is_dir():
                store.pull(f"{rel}/model")  # trained by an earlier attempt, on another node
            tracker.log_artifacts(run_id, trial_dir / "model", "model")
            tracker.set_tags(run_id, {"model_logged": "true"})
        write_json(result_file, {"trial_id": trial_id, "run_id": run_id, "params": params, "objectives": final,
                                  "steps": train_result.get("steps"), "training": training})
        status["status"] = "finished"
        write_json(trial_dir / "status.json", status)
        push("result.json", "status.json")
        tracker.finish(run_id)
        shown = ", ".join(f"{o.name} {final[o.name]:.4f}" for o in space.objectives)
        log(f"done: {shown}" + ("" if final["feasible"] else " (violates a constraint)"))
        ray.tune.report(_tune_report(final, run_id, train_result.get("steps")))
    except Exception as exc:
        message = root_error(exc)
        details = traceback.format_exc()
        status.update(status="failed", error=message)
        try:
            write_json(trial_dir / "status.json", status)
            write_text(trial_dir / "error.txt", details)
            push("status.json", "error.txt")
            tracker.fail(run_id, message, details)
        except Exception:
            pass
        log(f"failed: {message}")
        raise


