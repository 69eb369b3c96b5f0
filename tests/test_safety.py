"""Nothing unsafe loaded (no pickle: checkpoints in safetensors + JSON, model weights in
safetensors unless allowed), nothing half-written (stale stages removed, existing files kept),
bad input refused with one line."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import micro_config
from orchestrator.cli import main
from trainables.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def write_config(tmp_path, cfg: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# --------------------------------------------------------------------------------------------
# Checkpoints: safetensors + JSON, exact round trip


def test_state_round_trips_exactly(tmp_path):
    from trainables.checkpoint import STATE_JSON, STATE_TENSORS, read_state, write_state

    shared = torch.arange(6, dtype=torch.float32)
    payload = {
        "model": {"wte.weight": shared, "lm_head.weight": shared, "h.0.ln.bias": torch.randn(3).bfloat16()},
        "optimizer": {"state": {"wte.weight": {"exp_avg": torch.randn(6), "step": torch.tensor(7.0)}},
                      "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "foreach": None, "params": ["wte.weight"]}]},
        "by_int": {0: torch.tensor([1, 2], dtype=torch.int64), 3: "x"},
        "odd": {"__tensor__": "not a reference", "a.b": torch.ones(2), "a": {"b": torch.zeros(2)}},
        "floats": [math.inf, -math.inf, 0.1, 1e-300], "nan": math.nan, "flag": True, "none": None,
        "rng": torch.get_rng_state(), "empty": torch.zeros(0, 4),
    }
    write_state(tmp_path, payload)
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_JSON, STATE_TENSORS]
    back = read_state(tmp_path)
    assert back.keys() == payload.keys()
    for key in ("wte.weight", "lm_head.weight", "h.0.ln.bias"):
        assert torch.equal(back["model"][key], payload["model"][key]) and back["model"][key].dtype == payload["model"][key].dtype
    assert back["optimizer"]["param_groups"] == payload["optimizer"]["param_groups"]
    assert isinstance(back["optimizer"]["param_groups"][0]["betas"], tuple)
    assert torch.equal(back["optimizer"]["state"]["wte.weight"]["step"], torch.tensor(7.0))
    assert set(back["by_int"]) == {0, 3} and torch.equal(back["by_int"][0], payload["by_int"][0])
    assert back["odd"]["__tensor__"] == "not a reference"
    assert torch.equal(back["odd"]["a.b"], torch.ones(2)) and torch.equal(back["odd"]["a"]["b"], torch.zeros(2))
    assert back["floats"] == payload["floats"] and math.isnan(back["nan"])
    assert back["flag"] is True and back["none"] is None and back["empty"].shape == (0, 4)
    assert torch.equal(back["rng"], payload["rng"]) and back["rng"].dtype == torch.uint8
    text = (tmp_path / STATE_JSON).read_text()
    json.loads(text)  # plain JSON: no NaN / Infinity literals
    assert "Infinity" not in text and "NaN" not in text


def test_half_written_or_damaged_checkpoints_are_one_line(tmp_path):
    from trainables.checkpoint import STATE_JSON, STATE_TENSORS, read_state, write_state

    write_state(tmp_path / "a", {"w": torch.ones(2)})
    write_state(tmp_path / "b", {"w": torch.zeros(2)})
    shutil.copy(tmp_path / "b" / STATE_TENSORS, tmp_path / "a" / STATE_TENSORS)  # a kill between the two writes
    with pytest.raises(InputError, match="mixes two saves"):
        read_state(tmp_path / "a")
    (tmp_path / "b" / STATE_TENSORS).write_bytes(b"\x00" * 5)
    with pytest.raises(InputError, match="is not a readable safetensors file"):
        read_state(tmp_path / "b")
    (tmp_path / "b" / STATE_JSON).write_text("{")
    with pytest.raises(InputError, match="is not a readable checkpoint"):
        read_state(tmp_path / "b")


def _tiny_strategy(seed: int):
    from trainables.distributed import Strategy, WorkerContext

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    strategy = Strategy(WorkerContext(0, 1, 0, torch.device("cpu")), None,
                        type("T", (), {"max_grad_norm": 1.0})())
    strategy.prepare(model, lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.8, 0.95)),
                     lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s)))
    return strategy


def _steps(strategy, n: int) -> list[float]:
    losses = []
    for _ in range(n):
        x = torch.randn(5, 4)  # from the global RNG: restored with the checkpoint
        loss = strategy.module(x).pow(2).mean()
        loss.backward()
        strategy.step()
        losses.append(float(loss.detach()))
    return losses


def test_save_and_load_checkpoint_resume_exactly(tmp_path):
    """train_loop's own save/load: model, nested optimiser state (get_optimizer_state_dict),
    scheduler, loop state and RNG; the resumed steps equal the uninterrupted ones bit for bit."""
    from trainables.checkpoint import STATE_TENSORS
    from trainables.distributed import WorkerContext
    from trainables.train_loop import CHECKPOINT_FILE, TrainState, load_checkpoint, save_checkpoint

    ctx = WorkerContext(0, 1, 0, torch.device("cpu"))
    run = _tiny_strategy(0)
    _steps(run, 3)
    state = TrainState(step=3, history=[{"step": 0, "forget.ma": 0.5}, {"step": 2, "loss": math.nan}],
                       original={"forget.ma": 0.5}, best_step=2, best_score=math.inf,
                       best_state=run.trainable_state(), curve=[{"step": 1, "loss": 0.25}])
    save_checkpoint(tmp_path, run, state, ctx)
    import random

    import numpy as np
    scheduler_at_save = run.scheduler.state_dict()
    np_next, py_next = np.random.random(), random.random()
    assert (tmp_path / CHECKPOINT_FILE).is_file() and (tmp_path / STATE_TENSORS).is_file()
    keys = set(__import__("safetensors.torch", fromlist=["load_file"]).load_file(tmp_path / STATE_TENSORS))
    assert "optimizer.state.0.weight.exp_avg_sq" in keys and "rng.torch" in keys
    expected = _steps(run, 3)

    torch.manual_seed(999)  # disturb every RNG: the checkpoint must put them back
    random.seed(5)
    np.random.seed(5)
    resumed = _tiny_strategy(1)  # other initial weights, fresh optimiser
    back = TrainState()
    load_checkpoint(str(tmp_path), resumed, back)
    assert (back.step, back.best_step, back.best_score, back.original) == (3, 2, math.inf, {"forget.ma": 0.5})
    assert back.history[0] == state.history[0] and math.isnan(back.history[1]["loss"])
    assert back.curve == state.curve
    assert all(torch.equal(back.best_state[k], v) for k, v in state.best_state.items())
    assert resumed.scheduler.state_dict() == scheduler_at_save
    assert (np.random.random(), random.random()) == (np_next, py_next)
    assert _steps(resumed, 3) == expected
    assert all(torch.equal(a, b) for a, b in zip(resumed.inner.parameters(), run.inner.parameters()))


def test_deepspeed_optimizer_blob_round_trips(tmp_path):
    """The shape of zero.DeepSpeedStrategy.optimizer_state(): per-rank lists of master partitions
    and AdamW state dicts, param groups with tuples."""
    from trainables.checkpoint import read_state, write_state
    from trainables.zero import STATE_FORMAT

    blob = {"format": STATE_FORMAT, "stage": 2, "world_size": 2, "ranks": [
        {"hp": [torch.randn(10)], "state": [{"exp_avg": torch.randn(10), "exp_avg_sq": torch.rand(10),
                                             "step": torch.tensor(3.0)}],
         "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
                           "foreach": None, "maximize": False, "capturable": False, "differentiable": False,
                           "fused": None, "decoupled_weight_decay": True, "initial_lr": 3e-4}]}
        for _ in range(2)]}
    write_state(tmp_path, {"optimizer": blob})
    back = read_state(tmp_path)["optimizer"]
    assert {k: back[k] for k in ("format", "stage", "world_size")} == {"format": STATE_FORMAT, "stage": 2,
                                                                        "world_size": 2}
    for got, want in zip(back["ranks"], blob["ranks"]):
        assert got["param_groups"] == want["param_groups"]
        assert torch.equal(got["hp"][0], want["hp"][0])
        assert all(torch.equal(got["state"][0][k], v) for k, v in want["state"][0].items())


class _Payload:
    """Unpickling this runs open(marker, "w"): the marker file proves code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_pickle_checkpoint_is_never_unpickled(micro_assets, tmp_path, capsys):
    from trainables.train_loop import TrainState, load_checkpoint

    folder = tmp_path / "ckpt"
    folder.mkdir()
    marker = tmp_path / "pwned"
    (folder / "train_state.pt").write_bytes(pickle.dumps(_Payload(marker)))
    # the payload is live: unpickling it elsewhere does create its marker
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe))).close()
    assert probe.exists()

    with pytest.raises(InputError) as err:
        load_checkpoint(str(folder), None, TrainState())
    assert str(err.value).startswith(f"run.resume_from: {folder} holds a pickle checkpoint (train_state.pt)")
    assert not marker.exists()

    config = write_config(tmp_path, micro_config(micro_assets))
    out = tmp_path / "out"
    assert run_cli("unlearn", config, f"run.resume_from={folder}", "--output", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run.resume_from:") and "pickle checkpoint" in err and err.count("\n") == 1
    assert not marker.exists() and not out.exists()


def test_no_torch_load_without_weights_only_true():
    """Every torch.load in the project's code passes weights_only=True."""
    offenders = []
    for base in ("trainables", "orchestrator", "bench"):
        for path in (ROOT / base).rglob("*.py"):
            text = path.read_text()
            for m in re.finditer(r"torch\.load\(", text):
                depth, i = 1, m.end()
                while depth and i < len(text):
                    depth += {"(": 1, ")": -1}.get(text[i], 0)
                    i += 1
                if not re.search(r"weights_only\s*=\s*True", text[m.end():i]):
                    offenders.append(f"{path.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}")
    assert offenders == []


# --------------------------------------------------------------------------------------------
# Model weights: safetensors unless model.allow_pickle_weights; damaged folders are one line


def test_pickle_weights_refused_unless_allowed(micro_assets, tmp_path):
    from safetensors.torch import load_file

    from trainables.models import load_causal_lm

    folder = tmp_path / "pickled"
    shutil.copytree(micro_assets / "model", folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(InputError) as err:
        load_causal_lm(str(folder))
    message = str(err.value)
    assert message.startswith(f"model.name_or_path: {folder} holds only pickle weights")
    assert "model.allow_pickle_weights: true" in message and "\n" not in message
    allowed = load_causal_lm(str(folder), allow_pickle_weights=True)
    reference = load_causal_lm(str(micro_assets / "model"))
    assert all(torch.equal(a, b) for a, b in zip(allowed.state_dict().values(), reference.state_dict().values()))


def test_allow_pickle_weights_is_a_checked_config_key():
    from trainables.config import UnlearnConfig, from_dict

    assert from_dict(UnlearnConfig, {}).model.allow_pickle_weights is False
    with pytest.raises(InputError, match="model.allow_pickle_weights: expected true or false"):
        from_dict(UnlearnConfig, {"model": {"allow_pickle_weights": "yes"}})


@pytest.mark.parametrize("damage", ["config_not_json", "config_a_list", "truncated_weights", "tokenizer_not_json"])
def test_a_damaged_model_folder_is_one_line(micro_assets, tmp_path, damage):
    from trainables.models import load_causal_lm, load_tokenizer

    folder = tmp_path / "model"
    shutil.copytree(micro_assets / "model", folder)
    if damage == "config_not_json":
        (folder / "config.json").write_text("{oops")
    elif damage == "config_a_list":
        (folder / "config.json").write_text("[]")
    elif damage == "truncated_weights":
        (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:4000])
    else:
        (folder / "tokenizer.json").write_text("{oops")
    loader = ((lambda: load_tokenizer(str(folder), key="model.name_or_path")) if damage == "tokenizer_not_json"
              else (lambda: load_causal_lm(str(folder))))
    with pytest.raises(InputError) as err:
        loader()
    message = str(err.value)
    assert message.startswith("model.name_or_path: ") and str(folder) in message and "\n" not in message


def test_damaged_model_through_the_cli_is_one_line_without_traceback(micro_assets, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(micro_assets / "model", folder)
    (folder / "config.json").write_text("{oops")
    config = write_config(tmp_path, micro_config(micro_assets, model={"name_or_path": str(folder)}))
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "unlearn", str(config), "--output",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in proc.stderr and len(lines) == 1
    assert lines[0].startswith(f"error: model.name_or_path: cannot load '{folder}'")


def test_load_result_model_passes_the_revision(micro_assets, tmp_path, monkeypatch):
    import trainables.models
    from trainables.evaluate import load_result_model

    seen = []
    real = trainables.models.load_causal_lm

    def spy(name, dtype="fp32", trust_remote_code=False, revision=None, **kw):
        seen.append((name, revision, kw.get("allow_pickle_weights")))
        return real(str(micro_assets / "model"), dtype, trust_remote_code, **{k: v for k, v in kw.items()
                                                                              if k == "device"})

    monkeypatch.setattr(trainables.models, "load_causal_lm", spy)
    load_result_model(micro_assets / "model", revision="v1")
    load_result_model("undial-tests/a-hub-model", revision="abc123", allow_pickle_weights=True)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "undial-tests/base"}))
    (adapter / "adapter_model.bin").write_bytes(b"")
    with pytest.raises(InputError, match="holds only pickle weights"):  # the adapter's own weights
        load_result_model(adapter, revision="r2")
    assert seen == [(str(micro_assets / "model"), "v1", False), ("undial-tests/a-hub-model", "abc123", True)]
    with pytest.raises(InputError, match="--model: ./no/such/folder does not exist"):
        load_result_model("./no/such/folder")


# --------------------------------------------------------------------------------------------
# Data: spans errors name the file and the 1-based line


def test_bad_span_names_file_and_line(micro_assets, tmp_path):
    from trainables.config import DataConfig
    from trainables.data import load_split
    from trainables.models import load_tokenizer

    path = tmp_path / "f.jsonl"
    path.write_text('{"text": "Ada lives here", "spans": [[0, 3, "name"]]}\n\n'
                    '{"text": "Bo lives there", "spans": [[3, 99, "name"]]}\n')
    with pytest.raises(InputError) as err:
        load_split(str(path), load_tokenizer(str(micro_assets / "model")), DataConfig(min_length=1))
    assert str(err.value) == f"{path}: row 3: span [3, 99] is not inside its text (0 <= start < end <= 14)"


def test_short_record_names_its_line_not_its_index(micro_assets, tmp_path):
    from trainables.config import DataConfig
    from trainables.data import load_split
    from trainables.models import load_tokenizer

    path = tmp_path / "f.jsonl"
    path.write_text('{"text": "the account payment record address phone email"}\n\n\n{"text": "hi"}\n')
    with pytest.raises(InputError, match=re.escape(f"{path}: row 4: ")):
        load_split(str(path), load_tokenizer(str(micro_assets / "model")), DataConfig(min_length=4))


# --------------------------------------------------------------------------------------------
# Outputs: stale stages removed, bad places one line, existing files kept


def test_stale_partial_folders_are_removed_by_the_next_run(tmp_path):
    from orchestrator.unlearn import staged_output

    out = tmp_path / "out"
    killed = tmp_path / ".out.partial-k1ll3d"  # what a SIGKILLed run leaves
    (killed / "model").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    killed_too = tmp_path / f".out.partial-{dead.pid}-abcd"
    killed_too.mkdir()
    live = tmp_path / f".out.partial-{os.getppid()}-live"  # a process that is alive: kept
    live.mkdir()
    other = tmp_path / ".out2.partial-x"  # another output's: not ours to remove
    other.mkdir()
    with staged_output(out) as stage:
        assert stage.name.startswith(f".out.partial-{os.getpid()}-")
        (stage / "metrics.json").write_text("{}")
    assert not killed.exists() and not killed_too.exists()
    assert live.exists() and other.exists()
    assert (out / "metrics.json").is_file() and not stage.exists()


def test_staged_output_in_a_bad_place_is_one_line(tmp_path, monkeypatch):
    from orchestrator.unlearn import staged_output

    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError) as err:
        with staged_output(tmp_path / "afile" / "sub" / "out"):
            pytest.fail("staged into a file's child")
    assert str(err.value) == f"--output: {tmp_path / 'afile'} is a file, not a folder: cannot create " \
                             f"{tmp_path / 'afile' / 'sub' / 'out'}"

    import tempfile

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)  # root may write anywhere: simulate a read-only parent
    with pytest.raises(InputError) as err:
        with staged_output(tmp_path / "ro" / "out"):
            pytest.fail("staged without a folder")
    assert str(err.value) == f"--output: cannot create {tmp_path / 'ro' / 'out'} (Permission denied)"


def test_export_refuses_an_existing_file_without_overwrite(tmp_path, capsys):
    target = tmp_path / "best.yaml"
    target.write_text("mine\n")
    missing_store = f"sqlite:///{tmp_path / 'no.db'}"
    assert run_cli("export", "abc123", "--output", target, "--tracking-uri", missing_store) == 2
    err = capsys.readouterr().err
    assert err == f"error: --output: {target} exists (pass --overwrite to replace it)\n"
    # --overwrite gets past that check (and then fails on the store, still without touching the file)
    assert run_cli("export", "abc123", "--output", target, "--tracking-uri", missing_store, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "exists" not in err and "--tracking-uri" in err and err.count("\n") == 1
    assert target.read_text() == "mine\n"
