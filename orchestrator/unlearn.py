"""Driver side of one unlearning job: check the config and files, run the job (in this
process, or across Ray Train workers, which evaluate the original model, train, evaluate the
selected model where it is and save it), write the report. The driver loads no model.

Everything goes to a staging folder beside the output and is moved into place
only when the job succeeded, so a failed or refused job leaves nothing
half-written behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from trainables.config import UnlearnConfig, dump_yaml, from_dict, load_config, resolve_demo_paths
from trainables.errors import InputError
from trainables.io import write_json, write_text


def _shipped(package_dir: str, name: str) -> Path:
    """A file shipped beside this code: a wheel installs configs/ and search_spaces/ as
    undial_assets/<dir>/ next to orchestrator/ (pyproject.toml's package-dir); a checkout (or an
    editable install) has them at the top. Found by where this module lives, not through
    importlib.resources: an editable install elsewhere on the machine adds a placeholder to the
    undial_assets namespace that files() refuses, and would hand out the other copy's file."""
    root = Path(__file__).resolve().parent.parent
    installed = root / "undial_assets" / package_dir / name
    return installed if installed.is_file() else root / package_dir / name


DEMO_CONFIG = _shipped("configs", "demo.yaml")
DEMO_SPACE = _shipped("search_spaces", "demo.yaml")  # `undial sweep --demo`


def resolve_config(config_path: str | None, overrides: list[str], demo: bool, log=print) -> UnlearnConfig:
    """YAML (or the demo's config) + overrides -> a validated config with demo paths resolved
    (building the demo on first use)."""
    if demo:
        if config_path is not None:
            raise InputError("give either a config file or --demo, not both")
        config_path = str(DEMO_CONFIG)
    if config_path is None:
        raise InputError("a config file is needed (or --demo)")
    cfg = load_config(config_path, overrides)
    if cfg.uses_demo():
        from trainables.demo import ensure_demo

        demo_dir = ensure_demo(log=log)
        cfg = from_dict(UnlearnConfig, resolve_demo_paths(cfg.to_dict(), demo_dir))
    return cfg


@contextlib.contextmanager
def staged_output(path: str | Path, overwrite: bool = False):
    """Yield a fresh staging folder; on success it replaces `path`, on failure it is removed.

    Stages are `.NAME.partial-PID-XXXX` beside `path`; a run killed outright (SIGKILL, power)
    leaves its stage behind, so each run removes the stale ones of the same output first: those
    whose process is gone (a stage of a live process, e.g. a concurrent run, is kept)."""
    path = Path(path)
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"--output: {existing} is a file, not a folder: cannot create {path}")
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise InputError(f"--output: {path} exists and is not empty (pass --overwrite to replace it)")
    prefix = f".{path.name}.partial-"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in [p for p in path.parent.iterdir() if p.name.startswith(prefix)]:
            pid = old.name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and int(pid) > 0:
                try:
                    os.kill(int(pid), 0)
                    continue  # its process is alive: not stale
                except ProcessLookupError:
                    pass
                except PermissionError:
                    continue  # alive, another user's
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
        stage = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=path.parent))
    except OSError as exc:
        raise InputError(f"--output: cannot create {path} ({exc.strerror or exc})") from None
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    os.replace(stage, path)


def runs_locally(cfg: UnlearnConfig) -> bool:
    return cfg.scaling.num_workers == 1 and cfg.scaling.strategy == "none" and not os.environ.get("RAY_ADDRESS")


def run_job(cfg: UnlearnConfig, model_dir: Path | None, stage: Path, job: dict, log=print) -> dict:
    """The per-worker function here (one process) or across Ray Train workers; `job` says what
    they evaluate (trainables.train_loop.Job). model_dir None: evaluation only."""
    if runs_locally(cfg):
        from trainables.distributed import WorkerContext
        from trainables.train_loop import Job, run_evaluation, run_unlearning

        ctx = WorkerContext.setup(cfg.scaling.use_gpu)
        job_ = Job.from_plain(job)
        return run_unlearning(cfg, ctx, model_dir, log=log, job=job_) if job_.train else run_evaluation(cfg, ctx, log)
    from orchestrator.launcher import fit_distributed

    return fit_distributed(cfg, model_dir, storage_default=stage / "ray", log=log, job=job)


def training_summary(result: dict) -> dict:
    """metrics.json's "training" section of a training job's result."""
    return {k: result.get(k) for k in ("best_step", "steps", "stopped", "seconds", "timings")}


def run_unlearn_job(cfg: UnlearnConfig, output: str | Path, overwrite: bool = False, log=print) -> dict:
    from trainables.preflight import preflight

    preflight(cfg)  # refuses bad input before any output
    with staged_output(output, overwrite) as stage:
        write_text(stage / "config.yaml", dump_yaml(cfg))
        result = run_job(cfg, stage / "model", stage, {"evaluate_original": True, "evaluate_final": True}, log)
        evaluation = result["evaluation"]
        report = {"before": evaluation["original"], "after": evaluation["unlearned"],
                  "training": training_summary(result)}
        write_json(stage / "metrics.json", report)
        write_json(stage / "history.json", result.get("history", []))
    log(format_report(report))
    log(f"wrote {Path(output) / 'metrics.json'} and the model to {Path(output) / 'model'}")
    return report


def run_eval_job(cfg: UnlearnConfig, model: str | None, output: str | Path, overwrite: bool = False,
                 log=print) -> dict:
    """`undial eval`: one model (the config's, or a model / adapter folder) evaluated by the workers."""
    from trainables.preflight import preflight

    if model is not None:
        if not Path(model).exists():
            raise InputError(f"--model: {model} does not exist")
        cfg = from_dict(UnlearnConfig, {**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "name_or_path": model}})
    preflight(cfg, train=False)
    with staged_output(output, overwrite) as stage:
        result = run_job(cfg, None, stage, {"train": False}, log)
        metrics = result["evaluation"]["original"]
        write_json(stage / "metrics.json", {"model": cfg.model.name_or_path, "metrics": metrics})
    return metrics


def _flat(report: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in report.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(_flat(value, name))
        elif isinstance(value, (int, float)):
            out[name] = float(value)
    return out


def format_report(report: dict) -> str:
    """Before/after/change table of every metric both sides have; with eval.retain_model, the
    retain model's own figures (measured once, beside the original's) as a last column."""
    before, after = _flat(report["before"]), _flat(report["after"])
    retain = _flat(report["before"].get("retain_model") or {})
    keys = [k for k in before if k in after]
    width = max(len(k) for k in keys) if keys else 10
    extra = f"  {'retain':>10}" if retain else ""
    lines = [f"{'metric':<{width}}  {'before':>10}  {'after':>10}  {'change':>9}{extra}"]
    for key in keys:
        b, a = before[key], after[key]
        change = f"{(a - b) / abs(b):+.1%}" if b else ""
        r = (f"  {_num(retain[key]):>10}" if key in retain else f"  {'':>10}") if retain else ""
        lines.append(f"{key:<{width}}  {_num(b):>10}  {_num(a):>10}  {change:>9}{r}")
    return "\n".join(lines)


def _num(value: float) -> str:
    """4 decimals; a small p-value (forget_quality) in exponent form rather than 0.0000."""
    return f"{value:.2e}" if value and abs(value) < 1e-3 else f"{value:.4f}"


def format_metrics(metrics: dict) -> str:
    """One model's metrics as a two-column table (`undial eval`)."""
    flat = _flat(metrics)
    width = max((len(k) for k in flat), default=10)
    return "\n".join([f"{'metric':<{width}}  {'value':>10}"] +
                     [f"{key:<{width}}  {value:>10.4f}" for key, value in flat.items()])
