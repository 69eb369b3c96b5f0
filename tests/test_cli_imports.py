"""`undial pareto` and `undial export` stay light: they import neither torch nor transformers
nor Ray (each runs in a fresh interpreter, which then reports what it imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.space import space_from_dict

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "ray")

PROBE = """
import json, sys
from orchestrator.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def _run_cli(*argv: str) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1]) + proc.stderr


def _space(tmp_path: Path) -> dict:
    # the files need not exist: reading a finished sweep never opens them
    data = {k: str(tmp_path / f"{k}.jsonl") for k in ("forget", "unseen", "retain", "heldout", "prompts")}
    return {"name": "light", "base": {"model": {"name_or_path": str(tmp_path / "model")}, "data": data,
                                      "eval": {"el_n": [3], "mia": False}},
            "parameters": {"method.gamma": {"distribution": "loguniform", "low": 1, "high": 50}},
            "objectives": [{"name": "el3", "mode": "min"}, {"name": "mauve", "mode": "max"}]}


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    """A sweep folder as the driver leaves it: space.yaml and two finished trials."""
    root = tmp_path / "sweep"
    space = space_from_dict(_space(tmp_path))
    (root / "trials").mkdir(parents=True)
    (root / "space.yaml").write_text(space.dump())
    for trial_id, gamma, el3, mauve in (("t1", 5.0, 0.2, 0.8), ("t2", 20.0, 0.1, 0.5)):
        tdir = root / "trials" / trial_id
        tdir.mkdir()
        (tdir / "status.json").write_text(json.dumps({"status": "finished", "params": {"method.gamma": gamma},
                                                      "run_id": f"run-{trial_id}"}))
        (tdir / "result.json").write_text(json.dumps({"objectives": {"el3": el3, "mauve": mauve, "feasible": True}}))
    return root


def test_pareto_imports_no_torch_transformers_or_ray(sweep_dir):
    got, out = _run_cli("pareto", str(sweep_dir))
    assert got == {"rc": 0, "heavy": []}, out
    assert "Pareto front (el3" in out and "2 of 2 trials" in out and "t1=run-t1" in out
    got, out = _run_cli("pareto", str(sweep_dir), "--json")
    assert got == {"rc": 0, "heavy": []}
    assert {r["trial_id"] for r in json.loads(out[:out.rindex("}") + 1])["front"]} == {"t1", "t2"}


def test_export_imports_no_torch_transformers_or_ray(tmp_path):
    from mlflow.tracking import MlflowClient

    from trainables.config import dump_yaml

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("light", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp, tags={"tune_trial_id": "t1", "pareto": "true"})
    base = space_from_dict(_space(tmp_path)).base
    base["method"]["gamma"] = 7.5
    (tmp_path / "config.yaml").write_text(dump_yaml(base))
    client.log_artifact(run.info.run_id, str(tmp_path / "config.yaml"))
    client.set_terminated(run.info.run_id)

    out = tmp_path / "best.yaml"
    got, text = _run_cli("export", run.info.run_id, "--output", str(out), "--tracking-uri", uri)
    assert got == {"rc": 0, "heavy": []}, text
    assert yaml.safe_load(out.read_text())["method"]["gamma"] == 7.5
    assert "Pareto-optimal" in out.read_text().splitlines()[0]
    # a refusal goes through the same imports
    got, text = _run_cli("export", "no-such-run", "--output", str(tmp_path / "x.yaml"), "--tracking-uri", uri)
    assert got == {"rc": 2, "heavy": []} and "RUN_ID: no MLflow run 'no-such-run'" in text
