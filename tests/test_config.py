from pathlib import Path

import pytest
import yaml

from trainables.config import (UnlearnConfig, apply_overrides, dump_yaml, from_dict, load_config,
                                 resolve_demo_paths)
from trainables.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_defaults_validate():
    cfg = from_dict(UnlearnConfig, {})
    assert cfg.method.gamma == 10.0 and cfg.method.subset.policy == "all"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path):
    cfg = load_config(path)
    again = from_dict(UnlearnConfig, yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg


def test_overrides_parse_yaml_values():
    cfg = load_config(CONFIGS[0], ["train.lr=3e-5", "method.gamma=5", "lora.enabled=true",
                                   "method.subset.policy=spans", "eval.el_n=[3]"])
    assert cfg.train.lr == 3e-5 and cfg.method.gamma == 5.0 and cfg.lora.enabled
    assert cfg.method.subset.policy == "spans" and cfg.eval.el_n == [3]


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "train.lrr: unknown key"),
    ("nope.x=1", "nope: unknown key"),
    ("train.lr=-1", "train.lr: expected a number > 0"),
    ("train.lr=abc", "train.lr: expected a number"),
    ("method.gamma=-0.5", "method.gamma: expected a number >= 0"),
    ("lora.rank=0", "lora.rank: expected an integer >= 1"),
    ("lora.rank=2.5", "lora.rank: expected an integer"),
    ("model.dtype=fp8", "model.dtype: expected one of 'fp32', 'bf16'"),
    ("method.subset.policy=verbs", "method.subset.policy"),
    ("method.name=magic", "method.name: unknown method"),
    ("scaling.num_workers=2", "scaling.strategy: num_workers > 1 needs a strategy"),
    ("train.max_steps=null", "train.max_steps: set max_steps or epochs"),
    ("lora.enabled=yes please", "lora.enabled: expected true or false"),
    ("train=3", "train: expected a mapping"),
    ("badoverride", "expected key.sub=value"),
    ("eval.mauve.draws=0", "eval.mauve.draws: expected an integer >= 1"),
    ("eval.mauve.kmeans_seeds=0", "eval.mauve.kmeans_seeds: expected an integer >= 1"),
    ("eval.mauve.batch_size=0", "eval.mauve.batch_size: expected an integer >= 1"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(InputError) as err:
        load_config(CONFIGS[0], [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_mauve_draws_need_sampling():
    with pytest.raises(InputError, match="eval.mauve.draws: expected 1 with do_sample false"):
        load_config(CONFIGS[0], ["eval.mauve.draws=3", "eval.mauve.do_sample=false"])
    assert load_config(CONFIGS[0], ["eval.mauve.draws=3", "eval.mauve.do_sample=true"]).eval.mauve.draws == 3


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="mapping at the top level"):
        load_config(top)


def test_demo_paths_resolve(tmp_path):
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert cfg.uses_demo()
    resolved = from_dict(UnlearnConfig, resolve_demo_paths(cfg.to_dict(), tmp_path))
    assert resolved.model.name_or_path == str(tmp_path / "model")
    assert resolved.method.subset.reference_model == str(tmp_path / "reference")
    assert not resolved.uses_demo()


def test_apply_overrides_refuses_descending_into_a_value():
    with pytest.raises(InputError, match="not a section"):
        apply_overrides({"train": {"lr": 1}}, ["train.lr.x=2"])
