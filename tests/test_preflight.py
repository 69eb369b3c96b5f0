"""preflight(cfg): every check made from the config and the files before a job starts, each
refusal one line naming the config key (and the file and 1-based row where there is one)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from conftest import micro_config
from trainables.config import UnlearnConfig, from_dict
from trainables.errors import InputError
from trainables.preflight import preflight


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def make(root, **sections):
    return from_dict(UnlearnConfig, micro_config(root, **sections))


def refused(cfg, *, train=True) -> str:
    with pytest.raises(InputError) as err:
        preflight(cfg, train=train)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_the_micro_config_passes(micro_assets):
    preflight(make(micro_assets))
    preflight(make(micro_assets, lora={"enabled": True}, method={"teacher": "cached", "subset": {"policy": "spans"}}))


def test_batch_must_divide_into_micro_batches_and_workers(micro_assets):
    message = refused(make(micro_assets, train={"batch_size": 6, "micro_batch_size": 4}))
    assert message.startswith("train.batch_size: 6 is not a multiple of micro_batch_size (4) x workers (1)")
    message = refused(make(micro_assets, train={"batch_size": 4, "micro_batch_size": 1},
                           scaling={"num_workers": 3, "strategy": "ddp"}))
    assert "train.batch_size" in message and "workers (3)" in message
    preflight(make(micro_assets, train={"batch_size": 4, "micro_batch_size": 1},
                   scaling={"num_workers": 2, "strategy": "ddp"}))


def test_deepspeed_json_is_checked(micro_assets, tmp_path):
    cfg = make(micro_assets, scaling={"strategy": "deepspeed", "deepspeed_config": str(tmp_path / "nope.json")})
    assert refused(cfg).startswith("scaling.deepspeed_config:")


@pytest.mark.parametrize("policy", ["entities", "nouns"])
def test_spacy_pipeline_must_be_installed(micro_assets, policy, monkeypatch):
    import trainables.subsets

    def no_loading(name):  # the check must not load a pipeline (nor any model)
        raise AssertionError("preflight loaded a spaCy pipeline")

    monkeypatch.setattr(trainables.subsets, "_load_spacy_cached", no_loading)
    spec = {"policy": policy, "spacy_pipeline": "xx_no_such_pipeline_sm"}
    message = refused(make(micro_assets, method={"subset": spec}))
    assert message.startswith("method.subset.spacy_pipeline: spaCy pipeline 'xx_no_such_pipeline_sm' is not installed")
    spec["spacy_pipeline"] = "./no/such/pipeline"
    assert "does not exist" in refused(make(micro_assets, method={"subset": spec}))
    spec["spacy_pipeline"] = "blank:en"
    assert refused(make(micro_assets, method={"subset": spec})).startswith("method.subset.spacy_pipeline: 'blank:en'")


def _forget_copy(micro_assets, tmp_path, edit):
    records = [json.loads(line) for line in (micro_assets / "data/forget.jsonl").read_text().splitlines()]
    edit(records)
    path = tmp_path / "forget.jsonl"
    # A blank line after the first record: rows are file lines, not record indices.
    lines = [json.dumps(r) for r in records]
    path.write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")
    return path


def test_spans_policy_needs_spans_in_every_record(micro_assets, tmp_path):
    path = _forget_copy(micro_assets, tmp_path, lambda rs: rs[1].pop("spans"))  # record 2 = line 3
    cfg = make(micro_assets, method={"subset": {"policy": "spans"}}, data={"forget": str(path)})
    message = refused(cfg)
    assert message.startswith(f"data.forget: {path}: row 3: no 'spans' field")
    preflight(make(micro_assets, data={"forget": str(path)}))  # policy all does not need them

    none = tmp_path / "nospans.jsonl"
    write_jsonl(none, [{"text": r["text"]} for r in map(json.loads, (micro_assets / "data/forget.jsonl")
                                                          .read_text().splitlines())])
    cfg = make(micro_assets, method={"subset": {"policy": "spans"}}, data={"forget": str(none)})
    assert refused(cfg).startswith("method.subset.policy: 'spans' needs a 'spans' field") and str(none) in refused(cfg)


def test_a_span_outside_its_text_names_the_file_and_line(micro_assets, tmp_path):
    def edit(rs):
        rs[2]["spans"][0] = [5, len(rs[2]["text"]) + 3, "name"]

    path = _forget_copy(micro_assets, tmp_path, edit)  # record 3 = line 4
    message = refused(make(micro_assets, method={"subset": {"policy": "spans"}}, data={"forget": str(path)}))
    assert message.startswith(f"data.forget: {path}: row 4: span [5, ")
    assert "is not inside its text" in message


def test_el_n_must_fit_max_length(micro_assets):
    message = refused(make(micro_assets, eval={"el_n": [3, 48]}))  # data.max_length is 48
    assert message.startswith("eval.el_n: EL_48 can never be scored") and "n <= 47" in message
    preflight(make(micro_assets, eval={"el_n": [3, 7]}))


def test_el_n_longer_than_a_record_names_the_file_and_row(micro_assets, tmp_path):
    path = _forget_copy(micro_assets, tmp_path, lambda rs: rs.__setitem__(1, {"text": "Ada Lee lives on the street",
                                                                              "spans": []}))
    cfg = make(micro_assets, data={"forget": str(path), "min_length": 4}, eval={"el_n": [12]})
    message = refused(cfg)
    assert message.startswith("eval.el_n: EL_12 needs records longer than 12 tokens;")
    assert f"{path} row 3 has" in message


def test_mauve_featurizer_must_be_available_offline(micro_assets, tmp_path, monkeypatch):
    mauve = {"enabled": True, "featurizer": str(tmp_path / "no-featurizer")}
    assert refused(make(micro_assets, eval={"mauve": mauve})).startswith("eval.mauve.featurizer:")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: True)
    mauve["featurizer"] = "undial-tests/no-such-featurizer"
    assert "not in the Hugging Face cache" in refused(make(micro_assets, eval={"mauve": mauve}))
    mauve["featurizer"] = "all-MiniLM-L6-v2"  # the packaged offline default
    preflight(make(micro_assets, eval={"mauve": mauve}))
    # not checked when MAUVE is off
    preflight(make(micro_assets, eval={"mauve": {"enabled": False, "featurizer": "undial-tests/none"}}))


def test_mauve_prompts_must_be_long_enough(micro_assets):
    mauve = {"enabled": True, "prompt_tokens": 400, "new_tokens": 24}
    assert refused(make(micro_assets, eval={"mauve": mauve})).startswith("data.prompts: only 0 passages")


def test_lora_targets_must_exist_in_the_model(micro_assets, monkeypatch):
    import transformers

    def no_weights(*a, **k):
        raise AssertionError("preflight loaded weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    message = refused(make(micro_assets, lora={"enabled": True, "target_modules": ["q_proj", "q_prj"]}))
    assert message.startswith("lora.target_modules: 'q_prj' matches no module of this gpt_neo model")
    assert "q_proj" in message  # it lists what there is
    message = refused(make(micro_assets, lora={"enabled": True, "target_modules": ["attn"]}))
    assert message.startswith("lora.target_modules: 'attn' names GPTNeoAttention modules")
    preflight(make(micro_assets, lora={"enabled": True, "target_modules": ["c_fc", "transformer.h.0.attn.attention.q_proj"]}))
    preflight(make(micro_assets, lora={"enabled": True}))  # the family's defaults
    preflight(make(micro_assets, lora={"enabled": False, "target_modules": ["q_prj"]}))  # unused


def test_teacher_cache_cap(micro_assets):
    # 8 forget records x 48 tokens x vocab 320 x 2 bytes = 245760 bytes
    cfg = make(micro_assets, method={"teacher": "cached", "teacher_cache_max_gb": 245759 / 2**30})
    message = refused(cfg)
    assert message.startswith("method.teacher_cache_max_gb: the cached teacher needs") and "8 x 48 x 320" in message
    preflight(make(micro_assets, method={"teacher": "cached", "teacher_cache_max_gb": 245760 / 2**30}))
    preflight(make(micro_assets, method={"teacher": "live", "teacher_cache_max_gb": 1e-9}))


def test_resume_from_must_hold_a_checkpoint(micro_assets, tmp_path):
    from trainables.checkpoint import write_state

    missing = tmp_path / "nothing"
    assert refused(make(micro_assets, run={"resume_from": str(missing)})) == f"run.resume_from: {missing} does not exist"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no checkpoint" in refused(make(micro_assets, run={"resume_from": str(empty)}))
    write_state(tmp_path / "ckpt", {"step": 2})
    preflight(make(micro_assets, run={"resume_from": str(tmp_path / "ckpt")}))


def test_model_folder_checks(micro_assets, tmp_path):
    assert refused(make(micro_assets, model={"name_or_path": str(tmp_path / "none")})) == (
        f"model.name_or_path: cannot load '{tmp_path / 'none'}': no such folder")
    (tmp_path / "empty").mkdir()
    assert "holds no config.json" in refused(make(micro_assets, model={"name_or_path": str(tmp_path / "empty")}))

    bad = tmp_path / "badconfig"
    shutil.copytree(micro_assets / "model", bad)
    (bad / "config.json").write_text("{not json")
    message = refused(make(micro_assets, model={"name_or_path": str(bad)}))
    assert message.startswith(f"model.name_or_path: cannot load '{bad}'") and "not a valid JSON" in message

    trunc = tmp_path / "truncated"
    shutil.copytree(micro_assets / "model", trunc)
    (trunc / "model.safetensors").write_bytes((trunc / "model.safetensors").read_bytes()[:3000])
    message = refused(make(micro_assets, model={"name_or_path": str(trunc)}))
    assert message.startswith(f"model.name_or_path: {trunc / 'model.safetensors'} is not a readable safetensors file")


def test_pickle_only_model_folder_is_refused_unless_allowed(micro_assets, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(micro_assets / "model", folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    message = refused(make(micro_assets, model={"name_or_path": str(folder)}))
    assert message.startswith(f"model.name_or_path: {folder} holds only pickle weights (pytorch_model.bin)")
    assert "model.allow_pickle_weights: true" in message
    preflight(make(micro_assets, model={"name_or_path": str(folder), "allow_pickle_weights": True}))


def test_tokenizer_errors_name_the_key_that_was_set(micro_assets, tmp_path):
    folder = tmp_path / "badtok"
    shutil.copytree(micro_assets / "model", folder)
    (folder / "tokenizer.json").write_text("{broken")
    # model.tokenizer unset: the tokenizer is the model folder's, so the key is model.name_or_path
    message = refused(make(micro_assets, model={"name_or_path": str(folder)}))
    assert message.startswith(f"model.name_or_path: cannot load '{folder}'")
    message = refused(make(micro_assets, model={"tokenizer": str(folder)}))
    assert message.startswith(f"model.tokenizer: cannot load '{folder}'")
    assert refused(make(micro_assets, model={"tokenizer": str(tmp_path / "no-tok")})).startswith("model.tokenizer:")


def test_reference_model_is_checked(micro_assets, tmp_path):
    spec = {"policy": "reference", "reference_model": str(tmp_path / "no-ref")}
    assert refused(make(micro_assets, method={"subset": spec})).startswith(
        "method.subset.reference_model: cannot load")
    spec["reference_model"] = str(micro_assets / "reference")
    preflight(make(micro_assets, method={"subset": spec}))


@pytest.mark.parametrize("name", ["forget", "unseen", "heldout", "prompts"])
def test_data_files_must_exist(micro_assets, tmp_path, name):
    path = tmp_path / f"{name}.jsonl"
    assert refused(make(micro_assets, data={name: str(path)})) == f"data.{name}: {path}: file not found"


def test_data_file_problems_name_the_key_file_and_row(micro_assets, tmp_path):
    (tmp_path / "x.data").write_text("x")
    assert refused(make(micro_assets, data={"heldout": str(tmp_path / "x.data")})).startswith(
        f"data.heldout: {tmp_path / 'x.data'}: cannot tell the data format")
    bad = tmp_path / "unseen.jsonl"
    bad.write_text('{"text": "a fine record with enough words in it to pass"}\n\n{oops\n')
    assert refused(make(micro_assets, data={"unseen": str(bad)})) == (
        f"data.unseen: {bad}: row 3: not valid JSON (Expecting property name enclosed in double quotes)")
    # retain is read only when the retain term is on
    preflight(make(micro_assets, data={"retain": str(tmp_path / "no-retain.jsonl")}))
    assert refused(make(micro_assets, data={"retain": str(tmp_path / "no-retain.jsonl")},
                        method={"retain_weight": 0.5})).startswith("data.retain:")


def test_evaluation_only_skips_the_training_checks(micro_assets, tmp_path):
    cfg = make(micro_assets, train={"batch_size": 6, "micro_batch_size": 4}, run={"resume_from": str(tmp_path)},
               lora={"enabled": True, "target_modules": ["q_prj"]})
    preflight(cfg, train=False)
    assert refused(cfg).startswith("train.batch_size")


def test_cli_refuses_before_evaluating_or_writing(micro_assets, tmp_path, capsys, monkeypatch):
    import orchestrator.unlearn
    from orchestrator.cli import main

    monkeypatch.setattr(orchestrator.unlearn, "run_job", lambda *a, **k: pytest.fail("the job started"))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(micro_config(micro_assets)))
    out = tmp_path / "out"
    assert main(["unlearn", str(config), "eval.el_n=[3, 60]", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: eval.el_n: EL_60 can never be scored") and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
