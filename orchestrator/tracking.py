"""MLflow tracking for sweeps: one parent run per sweep, one nested child run per trial.

Everything goes through `MlflowClient` with explicit run ids (no active-run state), so the
driver, the trial processes and the Ray Train controllers can all write to the same runs.

* The default tracking URI is `sqlite:///<sweep dir>/mlflow.db` (MLflow 3's file store is in
  maintenance mode and refuses by default); `MLFLOW_TRACKING_URI` or the space's
  `tracking.uri` point at a server instead. With a local database the experiment's artifacts
  go to `<sweep dir>/mlartifacts` (not `./mlruns` under whatever the current folder is).
* A child run is keyed by its Tune trial id (tag `tune_trial_id`) under its parent (tag
  `mlflow.parentRunId`): a retried or resumed trial finds its run again instead of making a
  second one.
* Several processes write to one SQLite file: every call is retried on "database is locked".
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from trainables.errors import InputError

PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
TRIAL_TAG = "tune_trial_id"
SWEEP_TAG = "undial.sweep_dir"
KIND_TAG = "undial.kind"
PARETO_TAG = "pareto"
MODEL_TAG = "undial.model"  # where the trial's selected model is: a folder or a storage URI
MAX_PARAM_LENGTH = 6000


def default_tracking_uri(sweep_dir: str | Path, configured: str | None = None) -> str:
    """The space's tracking.uri, else $MLFLOW_TRACKING_URI, else a SQLite file in the sweep folder."""
    if configured:
        return configured
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(sweep_dir).resolve() / 'mlflow.db'}"


def is_local_uri(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI for this store on 127.0.0.1."""
    if uri.startswith(("http://", "https://", "databricks")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def _transient(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("database is locked", "database table is locked", "disk i/o error",
                                   "unable to open database", "connection refused", "temporarily unavailable"))


def retry(fn: Callable, *args, attempts: int = 10, **kwargs):
    """Call fn, retrying transient store errors (SQLite locks under concurrent writers)."""
    delay = 0.2
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MlflowException, sqlalchemy OperationalError, ...
            if attempt == attempts - 1 or not _transient(exc):
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 5.0)
    return None  # unreachable


class Tracker:
    """A thin, retrying wrapper over MlflowClient for one tracking URI (picklable: the client
    is made lazily in each process)."""

    def __init__(self, uri: str):
        self.uri = uri
        self._client = None

    def __getstate__(self):
        return {"uri": self.uri, "_client": None}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # ---- experiments and runs

    def experiment(self, name: str, artifact_location: str | None = None) -> str:
        """The id of experiment `name`, created (with its artifact location) when missing."""
        exp = retry(self.client.get_experiment_by_name, name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise InputError(f"tracking.experiment: '{name}' is a deleted MLflow experiment; restore it "
                                 "(mlflow experiments restore) or choose another name")
            return exp.experiment_id
        try:
            return retry(self.client.create_experiment, name, artifact_location=artifact_location)
        except Exception:  # created meanwhile by another process
            exp = retry(self.client.get_experiment_by_name, name)
            if exp is None:
                raise
            return exp.experiment_id

    def run_exists(self, run_id: str) -> bool:
        try:
            retry(self.client.get_run, run_id)
            return True
        except Exception:
            return False

    def create_run(self, experiment_id: str, name: str, tags: Mapping[str, str]) -> str:
        run = retry(self.client.create_run, experiment_id, run_name=name, tags={RUN_NAME_TAG: name, **tags})
        return run.info.run_id

    def child_runs(self, experiment_id: str, parent_id: str) -> list:
        """Every run under `parent_id` (all statuses), oldest first."""
        runs, token = [], None
        while True:
            page = retry(self.client.search_runs, [experiment_id],
                         filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=1000,
                         order_by=["attributes.start_time ASC"], page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def find_child(self, experiment_id: str, parent_id: str, trial_id: str):
        page = retry(self.client.search_runs, [experiment_id],
                     filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
                     max_results=10, order_by=["attributes.start_time ASC"])
        return page[0] if page else None

    def child_run(self, experiment_id: str, parent_id: str, trial_id: str, name: str,
                  tags: Mapping[str, str] | None = None) -> str:
        """The child run of trial `trial_id` (created on first call, found again after that)."""
        found = self.find_child(experiment_id, parent_id, trial_id)
        if found is not None:
            if found.info.status != "RUNNING":
                retry(self.client.update_run, found.info.run_id, status="RUNNING")
            return found.info.run_id
        return self.create_run(experiment_id, name, {PARENT_TAG: parent_id, TRIAL_TAG: trial_id,
                                                     KIND_TAG: "trial", **(tags or {})})

    # ---- logging

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = retry(self.client.get_run, run_id).data.params
        items = []
        for key, value in params.items():
            text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) \
                else str(value)
            text = text[:MAX_PARAM_LENGTH]
            if key in existing:  # MLflow refuses to change a logged param; a resumed run logs it again
                continue
            items.append(Param(key, text))
        for start in range(0, len(items), 100):
            retry(self.client.log_batch, run_id, params=items[start:start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for start in range(0, len(items), 500):
            retry(self.client.log_batch, run_id, metrics=items[start:start + 500])

    def log_metric_rows(self, run_id: str, rows: Iterable[tuple[str, float, int, int]]) -> None:
        """(key, value, timestamp_ms, step) rows in batches."""
        from mlflow.entities import Metric

        items = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in rows]
        for start in range(0, len(items), 500):
            retry(self.client.log_batch, run_id, metrics=items[start:start + 500])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        if items:
            retry(self.client.log_batch, run_id, tags=items)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        retry(self.client.log_artifact, run_id, str(path), artifact_path)

    def log_artifacts(self, run_id: str, folder: str | Path, artifact_path: str | None = None) -> None:
        retry(self.client.log_artifacts, run_id, str(folder), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        retry(self.client.log_text, run_id, text, artifact_file)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        retry(self.client.set_terminated, run_id, status)

    def fail(self, run_id: str, error: str, details: str | None = None) -> None:
        self.set_tags(run_id, {"error": error.strip().splitlines()[0] if error.strip() else "error"})
        if details:
            try:
                self.log_text(run_id, details, "error.txt")
            except Exception:
                pass
        self.finish(run_id, "FAILED")

    def download_artifact(self, run_id: str, path: str, dst: str | Path) -> Path:
        return Path(retry(self.client.download_artifacts, run_id, path, str(dst)))


# --------------------------------------------------------------------------------------------
# Provenance


def project_version() -> str:
    try:
        from importlib.metadata import version

        return version("undial-orchestrator")
    except Exception:
        from orchestrator import __version__

        return __version__


def git_state(repo: str | Path | None = None) -> dict[str, str]:
    """{"git.commit", "git.dirty"} of the checkout this package runs from ({} outside git)."""
    import subprocess

    repo = Path(repo or Path(__file__).resolve().parent.parent)
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except Exception:
        return {}
    return {"git.commit": commit, "git.dirty": str(bool(status)).lower()}


# --------------------------------------------------------------------------------------------
# Export: a trial's config as a ready-to-run `undial unlearn` config.


def export_config(run_id: str, output: str | Path, tracking_uri: str | None = None,
                  overwrite: bool = False) -> Path:
    """Write the config.yaml artifact of child run `run_id` to `output` (atomically; an existing
    file only with `overwrite`, checked before MLflow is asked)."""
    import tempfile

    import yaml

    from trainables.io import write_text

    output = Path(output)
    if output.is_dir():
        raise InputError(f"--output: {output} is a folder; give a file name (e.g. best.yaml)")
    if output.exists() and not overwrite:
        raise InputError(f"--output: {output} exists (pass --overwrite to replace it)")
    existing = output.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"--output: {existing} is a file, not a folder: cannot create {output}")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise InputError("--tracking-uri: needed (or MLFLOW_TRACKING_URI), e.g. "
                         "sqlite:///runs/demo-sweep/mlflow.db, or pass --sweep DIR")
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.is_file():
            raise InputError(f"--tracking-uri: {db} does not exist")
    tracker = Tracker(uri)
    try:
        run = retry(tracker.client.get_run, run_id)
    except Exception as exc:
        raise InputError(f"RUN_ID: no MLflow run '{run_id}' at {uri} ({str(exc).splitlines()[0]})") from None
    with tempfile.TemporaryDirectory(prefix="undial-export-") as tmp:
        try:
            local = tracker.download_artifact(run_id, "config.yaml", tmp)
        except Exception:
            kind = run.data.tags.get(KIND_TAG, "")
            hint = " (it is the sweep's parent run; pick a trial's run)" if kind == "sweep" else ""
            raise InputError(f"RUN_ID: run '{run_id}' holds no config.yaml artifact{hint}") from None
        text = local.read_text()
    data = yaml.safe_load(text)
    from trainables.config import UnlearnConfig, dump_yaml, from_dict

    cfg = from_dict(UnlearnConfig, data)  # refuses a config this version cannot run
    tags = run.data.tags
    header = [f"# Exported from MLflow run {run_id} (trial {tags.get(TRIAL_TAG, '?')}"
              f"{', Pareto-optimal' if tags.get(PARETO_TAG) == 'true' else ''}).",
              "# Run it: undial unlearn THIS_FILE --output DIR"]
    metrics = run.data.metrics
    shown = [f"{k} {metrics[k]:.4g}" for k in ("el3", "mauve", "retain_ppl_ratio") if k in metrics]
    if shown:
        header.append("# Sweep result: " + ", ".join(shown))
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_text(output, "\n".join(header) + "\n" + dump_yaml(cfg))
    except OSError as exc:
        raise InputError(f"--output: cannot write {output} ({exc.strerror or exc})") from None
    return output


def fetch_model(run_id: str, dst: str | Path, tracking_uri: str | None) -> str:
    """Copy trial run `run_id`'s selected model (its MODEL_TAG: a folder, or a storage URI when
    the sweep ran on one) to the local folder `dst`, which must not exist or be empty. Returns
    where it came from."""
    from orchestrator.storage import fetch_folder

    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise InputError(f"--model: {dst} exists and is not empty")
    run = retry(Tracker(tracking_uri).client.get_run, run_id)
    where = run.data.tags.get(MODEL_TAG)
    if not where:
        raise InputError(f"--model: run '{run_id}' records no selected model (tag {MODEL_TAG}); it is not a "
                         "finished trial of this version's sweeps")
    fetch_folder(where, dst)
    return where
