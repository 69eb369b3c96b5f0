import json
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import micro_config
from orchestrator.cli import main


def write_config(tmp_path, cfg: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def test_unlearn_writes_report_and_reloadable_model(micro_assets, tmp_path, capsys):
    config = write_config(tmp_path, micro_config(micro_assets))
    out = tmp_path / "out"
    assert run_cli("unlearn", config, "train.max_steps=4", "--output", out) == 0
    report = json.loads((out / "metrics.json").read_text())
    for when in ("before", "after"):
        assert 0 <= report[when]["forget"]["ma"] <= 1 and 0 <= report[when]["unseen"]["ma"] <= 1
        assert report[when]["retain"]["ppl"] > 1
        assert set(report[when]["forget"]) >= {"ma", "el3", "ma_private", "ppl"}
        assert "mia_auc" in report[when]
    assert report["training"]["steps"] == 4
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [0, 2, 4]
    assert (out / "model" / "model.safetensors").is_file() and (out / "config.yaml").is_file()
    assert not list(tmp_path.glob(".out.partial-*"))
    printed = capsys.readouterr().out
    assert "forget.ma" in printed and "before" in printed


def test_lora_result_is_an_adapter_that_reloads(micro_assets, tmp_path):
    from trainables.evaluate import load_result_model

    config = write_config(tmp_path, micro_config(micro_assets, lora={"enabled": True, "rank": 4},
                                                 train={"lr": 5e-2, "max_steps": 3, "eval_every": 3,
                                                        "select": "last"}))
    out = tmp_path / "out"
    assert run_cli("unlearn", config, "--output", out) == 0
    assert (out / "model" / "adapter_config.json").is_file()
    from trainables.models import load_causal_lm

    base = load_causal_lm(str(micro_assets / "model"))
    merged = load_result_model(out / "model")
    ids = torch.randint(0, base.config.vocab_size, (2, 10))
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)


@pytest.mark.parametrize("override, message", [
    ("train.lr=-1", "train.lr: expected a number > 0"),
    ("data.forget=/nonexistent/forget.jsonl", "/nonexistent/forget.jsonl: file not found"),
    ("model.name_or_path=/nonexistent/model", "cannot load '/nonexistent/model'"),
    ("method.subset.policy=spans", None),  # fine: the micro records carry spans
])
def test_bad_input_is_one_line_exit_2_and_no_output(micro_assets, tmp_path, capsys, override, message):
    config = write_config(tmp_path, micro_config(micro_assets, train={"max_steps": 1, "eval_every": 1}))
    out = tmp_path / "out"
    code = run_cli("unlearn", config, override, "--output", out)
    err = capsys.readouterr().err
    if message is None:
        assert code == 0
        return
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_refuses_a_non_empty_output(micro_assets, tmp_path, capsys):
    config = write_config(tmp_path, micro_config(micro_assets))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run_cli("unlearn", config, "--output", out) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_diverging_loss_names_the_step_and_leaves_nothing(micro_assets, tmp_path, capsys):
    config = write_config(tmp_path, micro_config(micro_assets, method={"name": "gradient_ascent"},
                                                 train={"lr": 1e4, "max_steps": 30, "eval_every": 100,
                                                        "max_grad_norm": None}))
    out = tmp_path / "out"
    assert run_cli("unlearn", config, "--output", out) == 1
    err = capsys.readouterr().err
    assert "loss became" in err and "at step" in err
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_eval_command_and_real_process_exit_code(micro_assets, tmp_path, capsys):
    config = write_config(tmp_path, micro_config(micro_assets))
    out = tmp_path / "ev"
    assert run_cli("eval", config, "--model", micro_assets / "model", "--output", out) == 0
    table = capsys.readouterr().out
    assert "value" in table and "forget.ma" in table and "before" not in table
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert "ma" in metrics["forget"] and "el3" in metrics["unseen"]
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "unlearn", str(config), "train.lrr=1",
                           "--output", str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "train.lrr: unknown key" in proc.stderr


def test_overrides_after_an_option_join_the_positionals(capsys):
    from orchestrator.cli import parse_cli

    args = parse_cli(["eval", "cfg.yaml", "--model", "m", "eval.mauve.draws=4", "--output", "o", "eval.el_n=[3]"])
    assert args.args == ["cfg.yaml", "eval.mauve.draws=4", "eval.el_n=[3]"] and args.model == "m"
    assert parse_cli(["unlearn", "--output", "o", "cfg.yaml", "train.lr=1e-4"]).args == ["cfg.yaml", "train.lr=1e-4"]
    assert parse_cli(["plan", "c.yaml", "--workers", "2", "train.batch_size=8"]).overrides == ["train.batch_size=8"]
    with pytest.raises(SystemExit) as err:
        parse_cli(["eval", "cfg.yaml", "--model", "m", "--output", "o", "--nope", "x=1"])
    assert err.value.code == 2 and "unrecognized arguments: --nope" in capsys.readouterr().err
