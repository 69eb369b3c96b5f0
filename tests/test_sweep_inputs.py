"""Bad input to `undial sweep` / `undial pareto`: one line on stderr, exit code 2, and nothing
left behind (no sweep folder, no MLflow store, no run), so that the corrected command runs.
No Ray is started: every refusal here comes before it."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from conftest import micro_config
from orchestrator.cli import main


def _space(root, **over) -> dict:
    base = micro_config(root, train={"max_steps": 2, "eval_every": 2, "log_every": 100},
                        eval={"mia": False, "mauve": {"enabled": False}})
    space = {"name": "inputs", "base": base,
             "parameters": {"method.gamma": {"distribution": "loguniform", "low": 1, "high": 50}},
             "objectives": [{"name": "el3", "mode": "min"}, {"name": "ma", "mode": "min"}],
             "budget": {"num_samples": 1}}
    space.update(over)
    return space


def _write(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _refused(capsys, argv: list[str], quiet: bool = True) -> str:
    """Run the CLI; it must exit 2 with one `error: ...` line (the only line on stderr when
    `quiet`: MLflow logs its store's creation there). Returns that line."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and (len(err) == 1 or not quiet), err
    assert not any("Traceback" in line for line in err), err
    return err[-1]


def test_bad_model_path_leaves_no_folder_and_the_retry_is_refused_the_same(micro_assets, tmp_path, capsys):
    raw = _space(micro_assets)
    raw["base"]["model"]["name_or_path"] = str(tmp_path / "no-such-model")
    space = _write(tmp_path / "space.yaml", raw)
    out = tmp_path / "runs" / "sweep"
    argv = ["sweep", space, "--output", str(out)]
    first = _refused(capsys, argv)
    assert "base.model.name_or_path" in first and "no-such-model" in first
    assert not out.exists() and not (tmp_path / "runs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]  # no mlflow.db / mlruns anywhere here
    assert _refused(capsys, argv) == first  # not "exists and is not empty"


def test_bad_data_file_and_bad_parameter_value_are_refused_before_anything(micro_assets, tmp_path, capsys):
    raw = _space(micro_assets)
    raw["base"]["data"]["heldout"] = str(tmp_path / "missing.jsonl")
    line = _refused(capsys, ["sweep", _write(tmp_path / "a.yaml", raw), "--output", str(tmp_path / "a")])
    assert "base.data.heldout" in line and "missing.jsonl" in line
    # a parameter that names a file: each of its values is checked like the base config
    raw = _space(micro_assets)
    raw["parameters"]["model.name_or_path"] = {"values": [str(micro_assets / "model"), str(tmp_path / "gone")]}
    line = _refused(capsys, ["sweep", _write(tmp_path / "b.yaml", raw), "--output", str(tmp_path / "b")])
    assert line.startswith("error: parameters.model.name_or_path: value") and "gone" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_overwrite_keeps_the_old_sweep_when_the_new_one_is_refused(micro_assets, tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    raw = _space(micro_assets)
    raw["base"]["model"]["name_or_path"] = str(tmp_path / "no-such-model")
    _refused(capsys, ["sweep", _write(tmp_path / "s.yaml", raw), "--output", str(out), "--overwrite"])
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]


def test_override_with_bad_yaml_is_one_line(micro_assets, tmp_path, capsys):
    space = _write(tmp_path / "space.yaml", _space(micro_assets))
    line = _refused(capsys, ["sweep", space, "parameters.train.lr={distribution: choice, values: [0.001]",
                             "--output", str(tmp_path / "out")])
    assert line.startswith("error: override 'parameters.train.lr={distribution") and "not valid YAML" in line
    line = _refused(capsys, ["sweep", space, "parameters.method.gamma=[1, 2", "--output", str(tmp_path / "out")])
    assert "override 'parameters.method.gamma=[1, 2'" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message", [
    ("name: [unclosed\n", "not valid YAML"),
    ("- 1\n- 2\n", "expected a mapping at the top level"),
    ("", "empty, not a saved search space"),
    ("name: x\nparameters: 3\n", "space.yaml: parameters: expected a mapping"),
])
def test_pareto_and_resume_on_a_corrupt_space_yaml(tmp_path, capsys, text, message):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "space.yaml").write_text(text)
    (sweep / "sweep.json").write_text(json.dumps({"parent_run_id": "x"}))
    for argv in (["pareto", str(sweep)], ["sweep", "--resume", "--output", str(sweep)]):
        line = _refused(capsys, argv)
        assert str(sweep / "space.yaml") in line and message in line, line
    assert sorted(p.name for p in sweep.iterdir()) == ["space.yaml", "sweep.json"]


def test_resume_with_the_space_file_on_a_corrupt_sweep(micro_assets, tmp_path, capsys):
    space = _write(tmp_path / "space.yaml", _space(micro_assets))
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "space.yaml").write_text("name: [unclosed\n")
    (sweep / "sweep.json").write_text("{}")
    line = _refused(capsys, ["sweep", space, "--resume", "--output", str(sweep)])
    assert str(sweep / "space.yaml") in line and "not valid YAML" in line
    (sweep / "sweep.json").write_text("{not json")
    line = _refused(capsys, ["sweep", space, "--resume", "--output", str(sweep)])
    assert str(sweep / "sweep.json") in line and "not readable JSON" in line


def test_output_whose_parent_is_a_file(micro_assets, tmp_path, capsys):
    space = _write(tmp_path / "space.yaml", _space(micro_assets))
    (tmp_path / "afile").write_text("x")
    line = _refused(capsys, ["sweep", space, "--output", str(tmp_path / "afile" / "sub" / "sweep")])
    assert line == f"error: --output: {tmp_path / 'afile'} is a file, not a folder"
    assert (tmp_path / "afile").read_text() == "x"


def test_output_in_a_folder_that_is_not_writable(micro_assets, tmp_path, capsys, monkeypatch):
    space = _write(tmp_path / "space.yaml", _space(micro_assets))
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root may write anywhere: make the permission check see what a user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(locked) else real(p, mode, **kw))
    else:
        locked.chmod(0o500)
    try:
        line = _refused(capsys, ["sweep", space, "--output", str(locked / "sweep")])
    finally:
        locked.chmod(0o700)
    assert line == f"error: --output: {locked} is not writable"
    assert list(locked.iterdir()) == []


def test_a_failure_after_the_folder_exists_and_before_any_trial_removes_it(micro_assets, tmp_path, capsys,
                                                                           monkeypatch):
    """The start (MLflow store, parent run, the original's evaluation) is undone as a whole."""
    import orchestrator.sweep as sweep
    from trainables.errors import InputError

    seen = {}

    def refuse(space, demo_dir, paths, log=print):
        seen["files"] = sorted(p.name for p in paths.root.iterdir())
        raise InputError("data.forget: refused while evaluating the original")

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(sweep, "evaluate_original", refuse)
    out = tmp_path / "sweep"
    line = _refused(capsys, ["sweep", _write(tmp_path / "space.yaml", _space(micro_assets)), "--output", str(out)],
                    quiet=False)
    assert line == "error: data.forget: refused while evaluating the original"
    assert {"space.yaml", "sweep.json", "mlflow.db"} <= set(seen["files"])  # it had got that far
    assert not out.exists()
