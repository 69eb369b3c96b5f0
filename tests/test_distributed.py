"""Distributed training: DDP, FSDP2 and DeepSpeed ZeRO-2/3, full fine-tuning and LoRA, 2 workers
on CPU (gloo) through Ray Train and torchrun, against one process with the same global batch.

Cost control (CI has 2 cores): every Ray Train worker process pays ~10 s of imports, so the
8-configuration matrix runs inside ONE Ray Train job: its per-worker function calls the
recipe (`run_unlearning`) once per configuration with Ray's process group and Ray reporting,
once more resumed from its step-2 checkpoint, and checks the strategy's state-dict contract
(gather to rank 0, load from rank 0). The launcher's own
path (`fit_distributed` -> `train_fn_per_worker`) is exercised end to end by the kill test,
and the same function under torchrun by its own test.

Tolerance. Everything is float32. One process sums 4 micro-batch gradients; 2 workers sum 2
each and all-reduce (or reduce-scatter, or ZeRO's flat buckets): the same numbers added in
another order, ~1e-7 relative per operation (float32 epsilon 1.2e-7). Measured over 4 AdamW
steps: loss and gradient norm agree to <= 3e-7 relative, logits of the saved models to
<= 4e-7 absolute. We allow 1e-5 (loss, gradient norm) and 2e-5 (logits): ~30x the noise,
while the faults these tests look for are orders of magnitude larger: a gradient scaled by
the worker count or the accumulation steps changes the gradient norm by 50-100%; a saved
shard or stale weights change the logits by ~1e-1 (asserted: training moves them > 1e-2).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from trainables.tiny import build_tiny, tiny_config

pytestmark = pytest.mark.slow

LOSS_RTOL = 1e-5
LOGITS_ATOL = 2e-5
STEPS = 4
CHECKPOINT_EVERY = 2

STRATEGIES = {  # name -> scaling section
    "ddp": {"strategy": "ddp"},
    "fsdp": {"strategy": "fsdp"},
    "zero2": {"strategy": "deepspeed", "zero_stage": 2},
    "zero3": {"strategy": "deepspeed", "zero_stage": 3},
}
MODES = ("full", "lora")
MATRIX = [f"{s}-{m}" for s in STRATEGIES for m in MODES]


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    paths = build_tiny(root / "assets")
    # ZeRO-3 keeps parameters under 1e5 elements whole on every worker by default, i.e. all of
    # this model: a user JSON (which also tests the merge) makes it partition everything.
    ds3 = root / "zero3.json"
    ds3.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 0,
                                                     "stage3_prefetch_bucket_size": "auto"}}))
    return {"root": root, "paths": paths, "zero3_json": str(ds3)}


def make_config(tiny: dict, mode: str, strategy: str | None = None, **sections) -> dict:
    scaling = {"num_workers": 1, "strategy": "none"}
    if strategy is not None:
        scaling = {"num_workers": 2, **STRATEGIES[strategy]}
        if strategy == "zero3":
            scaling["deepspeed_config"] = tiny["zero3_json"]
    cfg = tiny_config(tiny["paths"], lora={"enabled": mode == "lora"}, scaling=scaling,
                      train={"max_steps": STEPS, "log_every": 1000}, run={"checkpoint_every": CHECKPOINT_EVERY})
    for key, value in sections.items():
        cfg[key] = {**cfg[key], **value}
    return cfg


@pytest.fixture(scope="module")
def baselines(tiny) -> dict:
    """One process (no strategy), same global batch and seed: the reference per mode."""
    from trainables.config import UnlearnConfig, from_dict
    from trainables.distributed import WorkerContext
    from trainables.train_loop import run_unlearning

    out = {}
    for mode in MODES:
        cfg = from_dict(UnlearnConfig, make_config(tiny, mode))
        model_dir = tiny["root"] / f"single-{mode}"
        result = run_unlearning(cfg, WorkerContext.setup(False), model_dir, log=lambda *a, **k: None)
        out[mode] = {"result": result, "model_dir": model_dir}
    return out


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray of our own (2 CPUs, its own temp dir); shut down only if we started it."""
    ray = pytest.importorskip("ray")
    started = False
    if not ray.is_initialized():
        temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir,
                 log_to_driver=bool(os.environ.get("UNDIAL_TEST_RAY_LOGS")),  # workers' output, to debug
                 # Ray Train's controller polls workers every 2 s by default and a worker's report
                 # waits for the poll: poll faster, the tiny steps take milliseconds. A worker group
                 # gets 60 s to start by default: too tight for a loaded 2-core CI machine.
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
                                           "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600"}})
        started = True
    yield ray
    if started:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# The matrix: one Ray Train job, every configuration trained (and resumed) inside it.


def _matrix_worker(config: dict) -> None:
    """Ray Train per-worker function: for each configuration, the recipe from scratch (keeping
    the checkpoints it reports), then again resumed from its step-2 checkpoint."""
    from trainables.config import UnlearnConfig, from_dict
    from trainables.distributed import WorkerContext
    from trainables.train_loop import RayReporter, run_unlearning

    class KeepingReporter(RayReporter):
        """Reports through Ray Train and keeps a copy of each checkpoint (rank 0 writes them);
        restores only from run.resume_from."""

        def __init__(self, ctx, keep: Path | None):
            super().__init__(ctx)
            self.keep = keep

        def report(self, metrics, checkpoint_dir=None):
            if checkpoint_dir is not None and self.keep is not None and self.ctx.is_main:
                shutil.copytree(checkpoint_dir, self.keep / f"step_{metrics['step']}")
            super().report(metrics, checkpoint_dir)

        def restore_dir(self, run_cfg):
            return run_cfg.resume_from

    ctx = WorkerContext.setup(False)
    quiet = lambda *a, **k: None  # noqa: E731
    results = {}
    for name, cfg_dict in config["runs"].items():
        state_check = _state_contract(from_dict(UnlearnConfig, cfg_dict), ctx)
        root = Path(config["root"]) / name
        keep = root / "checkpoints"
        cfg = from_dict(UnlearnConfig, cfg_dict)
        full = run_unlearning(cfg, ctx, root / "model", KeepingReporter(ctx, keep), log=quiet)
        ctx.barrier()
        resume_cfg = from_dict(UnlearnConfig, {**cfg_dict, "run": {**cfg_dict["run"],
                                                                    "resume_from": str(keep / "step_2")}})
        resumed = run_unlearning(resume_cfg, ctx, root / "resumed", KeepingReporter(ctx, None), log=quiet)
        results[name] = {"full": full, "resumed": resumed, "world_size": ctx.world_size, "state": state_check}
    if ctx.is_main:
        (Path(config["root"]) / "matrix.json").write_text(json.dumps(results, default=str))


def _state_contract(cfg, ctx) -> dict:
    """What the best-state and initial-state paths rely on: trainable_state() gathers to rank 0
    (others get {}), and load_trainable_state() of rank 0's dict (others pass {}) sets every rank.
    Checked by perturbing the weights on rank 0 only, loading, and comparing every rank's logits."""
    import torch.distributed as dist

    from trainables.strategies import make_strategy
    from trainables.models import apply_lora, load_causal_lm

    model = load_causal_lm(cfg.model.name_or_path)
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    strategy = make_strategy(cfg.scaling, cfg.train, ctx)
    strategy.prepare(model, lambda params: torch.optim.AdamW(params, lr=1e-3),
                     lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0))
    state = strategy.trainable_state()
    empty = [None] * ctx.world_size
    dist.all_gather_object(empty, state == {})
    torch.manual_seed(1234)
    target = {}  # {} except on rank 0; tied weights (wte / lm_head) get the same perturbation
    for key, value in state.items():
        tied = next((k for k in target if torch.equal(state[k], value)), None)
        target[key] = target[tied] if tied else value + 0.05 * torch.randn_like(value)
    strategy.load_trainable_state(target)
    ids = torch.arange(3, 19).reshape(2, 8)
    with torch.no_grad():
        logits = strategy.module(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().contiguous()
    everyone = [torch.empty_like(logits) for _ in range(ctx.world_size)]
    dist.all_gather(everyone, logits)
    gathered = strategy.trainable_state()
    return {"rank0_has_state": not empty[0], "others_empty": all(empty[1:]),
            "max_rank_logit_diff": max(float((x - everyone[0]).abs().max()) for x in everyone),
            "gathered_equals_target": (all(torch.equal(gathered[k], target[k]) for k in target)
                                       and set(gathered) == set(target)) if ctx.is_main else None}


@pytest.fixture(scope="module")
def matrix(tiny, ray_session) -> dict:
    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable by workers
    root = tiny["root"] / "matrix"
    root.mkdir()
    runs = {}
    for name in MATRIX:
        strategy, mode = name.split("-")
        runs[name] = make_config(tiny, mode, strategy)
    trainer = TorchTrainer(_matrix_worker, train_loop_config={"runs": runs, "root": str(root)},
                           scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
                           run_config=RunConfig(name="matrix", storage_path=str(tiny["root"] / "ray")),
                           torch_config=TorchConfig(backend="gloo"))
    result = trainer.fit()
    assert result.error is None, result.error
    return {"root": root, "results": json.loads((root / "matrix.json").read_text())}


# --------------------------------------------------------------------------------------------
# Helpers


def probe_ids(tiny) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["paths"]["model"])
    return tok(["Ada Keller lives in Lyon; phone 123-4567.", "The bridge was closed after rain."],
               return_tensors="pt", padding=True).input_ids


def logits_of(model_dir, ids) -> torch.Tensor:
    from trainables.evaluate import load_result_model

    with torch.no_grad():
        return load_result_model(str(model_dir))(ids).logits


def assert_same_curve(curve, reference, what: str) -> None:
    assert [c["step"] for c in curve] == [c["step"] for c in reference], what
    for got, want in zip(curve, reference):
        for key in ("loss", "grad_norm", "lr"):
            assert got[key] == pytest.approx(want[key], rel=LOSS_RTOL), f"{what}: step {got['step']} {key}"


def assert_saved_result(model_dir: Path, mode: str) -> None:
    """A plain Hugging Face model folder (full FT) or a PEFT adapter folder (LoRA)."""
    is_adapter = (model_dir / "adapter_config.json").is_file()
    assert is_adapter == (mode == "lora"), sorted(p.name for p in model_dir.iterdir())
    if mode == "full":
        assert (model_dir / "model.safetensors").is_file()
        assert (model_dir / "config.json").is_file()
    else:
        assert (model_dir / "adapter_model.safetensors").is_file()
    assert (model_dir / "tokenizer.json").is_file() or (model_dir / "tokenizer_config.json").is_file()


# --------------------------------------------------------------------------------------------
# Tests


def test_baselines_train(tiny, baselines):
    """The reference runs move the weights enough for the logit comparisons to mean something."""
    ids = probe_ids(tiny)
    initial = logits_of(tiny["paths"]["model"], ids)
    for mode in MODES:
        trained = logits_of(baselines[mode]["model_dir"], ids)
        assert (trained - initial).abs().max() > 1e-2, mode
        assert len(baselines[mode]["result"]["curve"]) == STEPS


@pytest.mark.parametrize("name", MATRIX)
def test_two_workers_match_one_process(name, tiny, baselines, matrix):
    mode = name.split("-")[1]
    run = matrix["results"][name]
    assert run["world_size"] == 2
    reference = baselines[mode]
    assert_same_curve(run["full"]["curve"], reference["result"]["curve"], name)
    model_dir = matrix["root"] / name / "model"
    assert_saved_result(model_dir, mode)
    ids = probe_ids(tiny)
    got = logits_of(model_dir, ids)
    want = logits_of(reference["model_dir"], ids)
    torch.testing.assert_close(got, want, rtol=0, atol=LOGITS_ATOL)


@pytest.mark.parametrize("name", MATRIX)
def test_state_dicts_gather_to_rank0_and_load_from_it(name, matrix):
    """The contract the best-state / initial-state paths rely on (see _state_contract)."""
    check = matrix["results"][name]["state"]
    assert check["rank0_has_state"] and check["others_empty"]
    assert check["gathered_equals_target"]
    assert check["max_rank_logit_diff"] <= 1e-6  # every rank holds rank 0's weights


@pytest.mark.parametrize("name", MATRIX)
def test_resume_from_checkpoint_is_exact(name, tiny, matrix):
    """Weights, optimiser state (ZeRO: each worker's partition), scheduler, step and RNG come
    back: a run resumed at step 2 ends where the uninterrupted one did."""
    run = matrix["results"][name]
    assert run["resumed"]["resumed_at"] == CHECKPOINT_EVERY
    assert_same_curve(run["resumed"]["curve"], run["full"]["curve"], name + " resumed")
    ids = probe_ids(tiny)
    torch.testing.assert_close(logits_of(matrix["root"] / name / "resumed", ids),
                               logits_of(matrix["root"] / name / "model", ids), rtol=0, atol=LOGITS_ATOL)


def test_killed_worker_restarts_from_checkpoint(tiny, baselines, ray_session):
    """The launcher's path: rank 1 dies at step 3 (run.fail_at_step); Ray Train restarts the
    worker group (run.max_failures=1), which resumes from the step-2 checkpoint and ends with
    the uninterrupted run's losses and weights. ZeRO-3, full fine-tuning: the most state to
    bring back (partitioned weights and optimiser, a ZeRO-3 teacher)."""
    from trainables.config import UnlearnConfig, from_dict
    from orchestrator.launcher import fit_distributed

    cfg = from_dict(UnlearnConfig, make_config(tiny, "full", "zero3",
                                               run={"fail_at_step": 3, "max_failures": 1, "name": "kill"}))
    model_dir = tiny["root"] / "kill" / "model"
    result = fit_distributed(cfg, model_dir, storage_default=tiny["root"] / "kill" / "ray", log=lambda *a: None)
    assert result["resumed_at"] == CHECKPOINT_EVERY  # the run did die and come back
    reference = baselines["full"]
    assert_same_curve(result["curve"], reference["result"]["curve"], "killed run")
    assert result["curve"][-1]["loss"] == pytest.approx(reference["result"]["curve"][-1]["loss"], rel=LOSS_RTOL)
    assert_saved_result(model_dir, "full")
    ids = probe_ids(tiny)
    torch.testing.assert_close(logits_of(model_dir, ids), logits_of(reference["model_dir"], ids),
                               rtol=0, atol=LOGITS_ATOL)


HIDE_PACKAGES = '''
# sitecustomize for the torchrun test: ray and deepspeed look absent (as on the GPU machine).
import importlib.util
import sys

_HIDDEN = ("ray", "deepspeed")
for _name in _HIDDEN:
    sys.modules[_name] = None  # import -> ModuleNotFoundError
_find_spec = importlib.util.find_spec


def find_spec(name, package=None):
    if name.split(".")[0] in _HIDDEN:
        return None  # availability probes (transformers, accelerate) -> not installed
    return _find_spec(name, package)


importlib.util.find_spec = find_spec
'''


def test_torchrun_two_processes_without_ray(tiny, baselines):
    """The same training function under torchrun, with ray and deepspeed hidden (the GPU
    machine has neither): FSDP2 with LoRA, 2 processes."""
    config = tiny["root"] / "torchrun.yaml"
    config.write_text(yaml.safe_dump(make_config(tiny, "lora", "fsdp")))
    hide = tiny["root"] / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(HIDE_PACKAGES)
    out = tiny["root"] / "torchrun-out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "trainables.train_loop", str(config), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "train_result.json").read_text())
    assert_same_curve(result["curve"], baselines["lora"]["result"]["curve"], "torchrun")
    assert_saved_result(out, "lora")
    ids = probe_ids(tiny)
    torch.testing.assert_close(logits_of(out, ids), logits_of(baselines["lora"]["model_dir"], ids),
                               rtol=0, atol=LOGITS_ATOL)


def test_deepspeed_config_merge(tmp_path):
    from trainables.config import ScalingConfig, TrainConfig
    from trainables.errors import InputError
    from trainables.zero import build_deepspeed_config

    train = TrainConfig(batch_size=8, micro_batch_size=2, max_grad_norm=0.5)
    ours = build_deepspeed_config(ScalingConfig(num_workers=2, strategy="deepspeed", zero_stage=3), train, 2, False)
    assert ours["train_batch_size"] == 8 and ours["gradient_accumulation_steps"] == 2
    assert ours["train_micro_batch_size_per_gpu"] == 2 and ours["gradient_clipping"] == 0.5
    assert ours["zero_optimization"]["stage"] == 3 and ours["bf16"]["enabled"] is False

    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"overlap_comm": True}, "gradient_accumulation_steps": "auto"}))
    merged = build_deepspeed_config(ScalingConfig(num_workers=2, strategy="deepspeed", zero_stage=2,
                                                  deepspeed_config=str(user)), train, 2, True)
    assert merged["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert merged["gradient_accumulation_steps"] == 2 and merged["bf16"]["enabled"] is True

    for bad in ({"train_batch_size": 16}, {"optimizer": {"type": "Adam"}}, {"fp16": {"enabled": True}}):
        user.write_text(json.dumps(bad))
        with pytest.raises(InputError, match="scaling.deepspeed_config"):
            build_deepspeed_config(ScalingConfig(num_workers=2, strategy="deepspeed", deepspeed_config=str(user)),
                                   train, 2, False)
