"""Ray Train launcher: one TorchTrainer per unlearning job, across workers.

Locally it starts Ray itself (or joins the cluster at RAY_ADDRESS); the workers
run trainables.train_loop.train_fn_per_worker, which does the same under torchrun.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from trainables.errors import InputError, TrainingDiverged


# Ray takes a node's address from the machine's outside interface unless this flag (read when
# ray is imported) is 0; then a local Ray's node address is 127.0.0.1 and its GCS, raylet,
# agents and workers listen on loopback only (measured with Ray 2.60). Ray's token
# authentication stays on. The CLI sets it before anything imports ray.
LOOPBACK_FLAG = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


# Without a dashboard there is no State API: silence what polls it (trainables/ray_hooks.py).
LOCAL_WORKER_HOOK = "trainables.ray_hooks.quiet_local_ray"


def keep_local_ray_on_loopback() -> None:
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault(LOOPBACK_FLAG, "0")


def ensure_ray(log=print, temp_dir: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at RAY_ADDRESS, or start a local Ray for this process: node address
    127.0.0.1, no dashboard (so no job server), token authentication on."""
    keep_local_ray_on_loopback()
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        log(f"joined the Ray cluster at {address}")
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, _node_ip_address="127.0.0.1",
                 _temp_dir=temp_dir or os.environ.get("UNDIAL_RAY_TMPDIR"),
                 runtime_env={"worker_process_setup_hook": LOCAL_WORKER_HOOK})
        node = ray.util.get_node_ip_address()
        where = "" if node == "127.0.0.1" else (f"; warning: its node address is {node} (ray was imported before "
                                                f"{LOOPBACK_FLAG}=0 could be set)")
        log(f"started a local Ray ({ray.cluster_resources().get('CPU', 0):.0f} CPUs) on {node}{where}")


def build_trainer(cfg, model_dir: str | Path, storage_path: str | Path, name: str | None = None,
                  callbacks=None, job: dict | None = None):
    """A ray.train.torch.TorchTrainer for `cfg` (ScalingConfig, RunConfig, Checkpoint/FailureConfig);
    `job` (trainables.train_loop.Job as a dict) says what the workers evaluate."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainables.train_loop import train_fn_per_worker

    # Train workers keep the process's working directory (a job's --working-dir, shipped to every
    # node) instead of moving into their run folder: a config's relative input paths resolve there.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # Train's controller sees a finished worker group (and takes reports) at its polls: Ray's 2 s
    # between polls leaves each run idle for ~1 s at its end; Train passes this on to the controller.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    sc = cfg.scaling
    resources = dict(sc.resources_per_worker) or None
    scaling = ScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=resources)
    run_config = RunConfig(name=name or cfg.run.name, storage_path=str(storage_path),
                           checkpoint_config=CheckpointConfig(num_to_keep=2),
                           failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                           callbacks=callbacks)
    return TorchTrainer(train_fn_per_worker,
                        train_loop_config={**cfg.to_dict(), "_output_dir": str(model_dir), "_job": job or {}},
                        scaling_config=scaling, run_config=run_config,
                        torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"))


def fetch_result(checkpoint, model_dir: Path | None) -> dict:
    """Copy the final checkpoint's model/ to model_dir (None: an evaluation, no model); return
    its train_result.json."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="undial-fetch-") as tmp:
        local = Path(checkpoint.to_directory(tmp))
        if not (local / "train_result.json").is_file():
            raise RuntimeError(f"the last checkpoint ({checkpoint.path}) holds no train_result.json: "
                               "the run did not finish")
        if model_dir is not None:
            if not (local / "model").is_dir():
                raise RuntimeError(f"the last checkpoint ({checkpoint.path}) holds no model/: the run did not finish")
            if model_dir.exists():
                shutil.rmtree(model_dir)
            shutil.copytree(local / "model", model_dir)
        return json.loads((local / "train_result.json").read_text())


def fit_distributed(cfg, model_dir: str | Path | None, storage_default: str | Path, log=print,
                    job: dict | None = None, name: str | None = None) -> dict:
    """Run the job on Ray Train; the result lands in model_dir. Returns the train result."""
    from orchestrator.storage import is_remote

    storage = cfg.run.storage_path or (str(storage_default) if is_remote(storage_default)
                                       else str(Path(storage_default).resolve()))
    ensure_ray(log)
    log(f"Ray Train: {cfg.scaling.num_workers} workers, strategy {cfg.scaling.strategy}, storage {storage}")
    trainer = build_trainer(cfg, model_dir or "", storage, name=name, job=job)
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; surface ours as ours
        raise _unwrap_worker_error(exc) from exc
    if result.error is not None:
        raise _unwrap_worker_error(result.error)
    return fetch_result(result.checkpoint, Path(model_dir) if model_dir else None)


def _unwrap_worker_error(exc: BaseException) -> BaseException:
    """InputError / TrainingDiverged raised in a worker reach the driver wrapped; unwrap them so
    the CLI prints one line."""
    seen = set()
    stack = [exc]
    while stack:
        err = stack.pop()
        if id(err) in seen or err is None:
            continue
        seen.add(id(err))
        if isinstance(err, (InputError, TrainingDiverged)):
            return err
        stack.extend([err.__cause__, err.__context__])
        stack.extend(getattr(err, "worker_failures", {}).values() if isinstance(
            getattr(err, "worker_failures", None), dict) else [])
        for attr in ("cause", "error"):
            inner = getattr(err, attr, None)
            if isinstance(inner, BaseException):
                stack.append(inner)
        text = str(err)
        for kind in (InputError, TrainingDiverged):
            marker = f"{kind.__name__}: "
            if marker in text:
                line = text.split(marker, 1)[1].splitlines()[0]
                return kind(line)
    return exc
