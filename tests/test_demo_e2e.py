"""End to end on the (tiny) offline demo: `undial unlearn` with the demo's method settings
(UnDIAL, gamma 10, `reference` positions, retain-set NLL term, full fine-tuning) really unlearns."""

import json

import yaml

from orchestrator.cli import main
from trainables.config import load_config, resolve_demo_paths
from orchestrator.unlearn import DEMO_CONFIG


def demo_config(tiny_demo, tmp_path, **overrides):
    cfg = resolve_demo_paths(load_config(DEMO_CONFIG).to_dict(), tiny_demo)
    for key, value in overrides.items():
        section, name = key.split("__")
        cfg[section][name] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_undial_on_reference_positions_unlearns_the_forget_records(tiny_demo, tmp_path):
    # The demo's lr (1e-3) for 20 steps, warm-up shortened to fit them, moves the tiny demo.
    config = demo_config(tiny_demo, tmp_path, train__max_steps=20, train__warmup_steps=5, train__eval_every=10,
                         train__batch_size=8, train__max_ppl_factor=1.5, eval__prefix_stride=8, eval__el_n=[3])
    out = tmp_path / "out"
    assert main(["unlearn", str(config), "eval.mauve.max_prompts=32", "--output", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    before, after = report["before"], report["after"]
    assert before["forget"]["ma"] > before["unseen"]["ma"] + 0.4  # memorised to begin with
    assert report["training"]["best_step"] > 0
    assert after["forget"]["ma"] < before["forget"]["ma"] - 0.1
    assert after["forget"]["ma_private"] < before["forget"]["ma_private"] - 0.1
    assert after["forget"]["el3"] < before["forget"]["el3"]
    # the unseen records move far less than the forget records
    assert before["unseen"]["ma"] - after["unseen"]["ma"] < 0.5 * (before["forget"]["ma"] - after["forget"]["ma"])
    assert after["retain"]["ppl"] < 1.5 * before["retain"]["ppl"]
    assert 0 < after["mauve"] <= 1 and after["mauve_samples"] >= 2


def test_threshold_stopping_rule_stops_where_forget_falls_below_unseen(tiny_demo, tmp_path):
    # A large learning rate crosses Jang et al.'s thresholds within the first evaluation.
    config = demo_config(tiny_demo, tmp_path, train__lr=5e-3, train__warmup_steps=0, train__batch_size=8,
                         train__max_steps=60, train__eval_every=5,
                         train__stop_when="threshold", train__select="last", method__gamma=30.0,
                         eval__prefix_stride=8, eval__el_n=[3], eval__mia=False)
    out = tmp_path / "out"
    assert main(["unlearn", str(config), "eval.mauve.enabled=false", "--output", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    assert "thresholds" in report["training"]["stopped"]
    assert report["training"]["steps"] == history[-1]["step"] < 60
    last = history[-1]
    assert last["forget.ma"] < report["before"]["unseen"]["ma"]
    assert last["forget.el3"] < report["before"]["unseen"]["el3"]
    assert all(h["forget.ma"] >= report["before"]["unseen"]["ma"] or h["forget.el3"] >=
               report["before"]["unseen"]["el3"] for h in history[:-1])
