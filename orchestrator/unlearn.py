"""Driver side of one unlearning job: evaluate the original model, train (in this
process, or across Ray Train workers), evaluate the result, write the report.

Everything goes to a staging folder beside the output and is moved into place
only when the job succeeded, so a failed or refused job leaves nothing
half-written behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from trainables.config import UnlearnConfig, dump_yaml, from_dict, load_config, resolve_demo_paths
from trainables.errors import InputError

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


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
    """Yield a fresh staging folder; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise InputError(f"--output: {path} exists and is not empty (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    os.replace(stage, path)


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)


def runs_locally(cfg: UnlearnConfig) -> bool:
    return cfg.scaling.num_workers == 1 and cfg.scaling.strategy == "none" and not os.environ.get("RAY_ADDRESS")


def evaluate_path(cfg: UnlearnConfig, model_path: str | None, data, tokenizer, log=print) -> dict:
    from trainables.evaluate import evaluate_model, load_result_model

    model = load_result_model(model_path or cfg.model.name_or_path, cfg.model.dtype,
                              trust_remote_code=cfg.model.trust_remote_code)
    return evaluate_model(model, tokenizer, data, cfg.eval, seed=cfg.train.seed, log=log)


def train(cfg: UnlearnConfig, model_dir: Path, stage: Path, log=print) -> dict:
    """Run the training function here (one process) or through Ray Train."""
    if runs_locally(cfg):
        from trainables.distributed import WorkerContext
        from trainables.train_loop import run_unlearning

        return run_unlearning(cfg, WorkerContext.setup(cfg.scaling.use_gpu), model_dir, log=log)
    from orchestrator.launcher import fit_distributed

    return fit_distributed(cfg, model_dir, storage_default=stage / "ray", log=log)


def run_unlearn_job(cfg: UnlearnConfig, output: str | Path, overwrite: bool = False, log=print) -> dict:
    from trainables.data import load_datasets
    from trainables.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path, cfg.model.trust_remote_code,
                               cfg.model.revision)
    data = load_datasets(cfg.data, tokenizer, need_retain=False)  # refuses bad data before any output
    with staged_output(output, overwrite) as stage:
        (stage / "config.yaml").write_text(dump_yaml(cfg))
        log("evaluating the original model ...")
        before = evaluate_path(cfg, None, data, tokenizer, log)
        result = train(cfg, stage / "model", stage, log)
        log("evaluating the unlearned model ...")
        after = evaluate_path(cfg, str(stage / "model"), data, tokenizer, log)
        report = {"before": before, "after": after,
                  "training": {k: result.get(k) for k in ("best_step", "steps", "stopped", "seconds")}}
        write_json(stage / "metrics.json", report)
        write_json(stage / "history.json", result.get("history", []))
    log(format_report(report))
    log(f"wrote {Path(output) / 'metrics.json'} and the model to {Path(output) / 'model'}")
    return report


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
    """Before/after/change table of every metric both sides have."""
    before, after = _flat(report["before"]), _flat(report["after"])
    keys = [k for k in before if k in after]
    width = max(len(k) for k in keys) if keys else 10
    lines = [f"{'metric':<{width}}  {'before':>10}  {'after':>10}  {'change':>9}"]
    for key in keys:
        b, a = before[key], after[key]
        change = f"{(a - b) / abs(b):+.1%}" if b else ""
        lines.append(f"{key:<{width}}  {b:>10.4f}  {a:>10.4f}  {change:>9}")
    return "\n".join(lines)


def format_metrics(metrics: dict) -> str:
    """One model's metrics as a two-column table (`undial eval`)."""
    flat = _flat(metrics)
    width = max((len(k) for k in flat), default=10)
    return "\n".join([f"{'metric':<{width}}  {'value':>10}"] +
                     [f"{key:<{width}}  {value:>10.4f}" for key, value in flat.items()])
