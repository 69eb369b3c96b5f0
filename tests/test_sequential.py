"""Sequential unlearning requests (orchestrator/sequential.py): data.forget as a list, the
split of one forget file, a 2-request run (files, MLflow, chaining), LoRA chaining."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import micro_config
from orchestrator.cli import main
from trainables.config import SEQUENTIAL_FORGET, UnlearnConfig, from_dict, resolve_demo_paths
from trainables.errors import InputError


def cheap(root: Path, **sections) -> dict:
    """The micro config at its cheapest: 1 step, no attacks."""
    cfg = micro_config(root, train={"max_steps": 1, "eval_every": 1})
    cfg["eval"]["mia"] = False
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def halves(micro_assets: Path, tmp_path: Path) -> list[str]:
    lines = (micro_assets / "data/forget.jsonl").read_text().splitlines()
    paths = []
    for i, part in enumerate((lines[:4], lines[4:]), start=1):
        path = tmp_path / f"part{i}.jsonl"
        path.write_text("\n".join(part) + "\n")
        paths.append(str(path))
    return paths


# ---------------------------------------------------------------------------- the config


def test_forget_list_is_accepted_and_one_element_is_the_string(micro_assets):
    cfg = micro_config(micro_assets)
    files = [cfg["data"]["forget"], str(micro_assets / "data/unseen.jsonl")]
    assert from_dict(UnlearnConfig, {**cfg, "data": {**cfg["data"], "forget": files}}).data.forget == files
    one = from_dict(UnlearnConfig, {**cfg, "data": {**cfg["data"], "forget": files[:1]}})
    assert one.data.forget == files[0]  # exactly as the string


@pytest.mark.parametrize("forget", [[], ["a.jsonl", "a.jsonl"], ["a.jsonl", " "], [1, 2], {"a": 1}])
def test_bad_forget_lists_are_refused_in_one_line(micro_assets, forget):
    cfg = micro_config(micro_assets)
    with pytest.raises(InputError) as err:
        from_dict(UnlearnConfig, {**cfg, "data": {**cfg["data"], "forget": forget}})
    assert str(err.value).startswith("data.forget: ") and "\n" not in str(err.value)


def test_demo_paths_resolve_inside_the_list(tmp_path):
    cfg = from_dict(UnlearnConfig, {"data": {"forget": ["demo:data/a.jsonl", "/x/b.jsonl"]}})
    assert cfg.uses_demo()
    resolved = resolve_demo_paths(cfg.to_dict(), tmp_path)
    assert resolved["data"]["forget"] == [str(tmp_path / "data/a.jsonl"), "/x/b.jsonl"]
    plain = from_dict(UnlearnConfig, {**resolved, "model": {"name_or_path": "/m"},
                                      "method": {"subset": {"policy": "all"}}, "eval": {"retain_model": None}})
    assert not plain.uses_demo()


def test_a_list_reaching_the_workers_is_refused(micro_assets, tmp_path):
    from trainables.data import load_datasets
    from trainables.models import load_tokenizer
    from trainables.preflight import preflight

    raw = micro_config(micro_assets)
    cfg = from_dict(UnlearnConfig, {**raw, "data": {**raw["data"], "forget": halves(micro_assets, tmp_path)}})
    for call in (lambda: preflight(cfg), lambda: preflight(cfg, train=False),
                 lambda: load_datasets(cfg.data, load_tokenizer(str(micro_assets / "model")))):
        with pytest.raises(InputError) as err:
            call()
        assert str(err.value) == SEQUENTIAL_FORGET


# ---------------------------------------------------------------------------- the split


def test_split_writes_contiguous_parts_covering_every_record(tmp_path):
    from orchestrator.sequential import split_forget

    rows = [{"text": f"record {i}", "spans": [[0, 6, "x"]]} for i in range(7)]
    src = tmp_path / "f.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[3:]))
    data = from_dict(UnlearnConfig, {}).data
    parts = split_forget(str(src), 3, tmp_path / "parts", data)
    assert [p.name for p in parts] == ["forget-1.jsonl", "forget-2.jsonl", "forget-3.jsonl"]
    got = [[json.loads(line) for line in p.read_text().splitlines()] for p in parts]
    assert [len(g) for g in got] == [3, 2, 2]
    assert [r for g in got for r in g] == rows  # every record once, in order, as it was

    text = tmp_path / "f.txt"
    text.write_text("one line\ntwo line\n")
    parts = split_forget(str(text), 2, tmp_path / "text", data)
    assert [json.loads(p.read_text()) for p in parts] == [{"text": "one line"}, {"text": "two line"}]
    for n, message in ((8, "holds 7 records"), (1, "expected an integer >= 2")):
        with pytest.raises(InputError, match=f"^--split-forget: .*{message}"):
            split_forget(str(src), n, tmp_path / "x", data)


def test_cli_refuses_a_split_below_two(micro_assets, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cheap(micro_assets)))
    assert main(["unlearn", str(config), "--split-forget", "1", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --split-forget: expected an integer >= 2, got 1"
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- runs


def test_two_requests_chain_and_report_every_forget_set(micro_assets, tmp_path, capsys):
    from orchestrator.tracking import KIND_TAG, Tracker

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cheap(micro_assets)))
    out = tmp_path / "seq"
    assert main(["unlearn", str(config), "--split-forget", "2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| request 2 |" in printed and "set 2 EL3 / MA" in printed

    for f in ("config.yaml", "sequential.json", "sequential.md", "sequential.png", "mlflow.db",
              "requests/forget-1.jsonl", "requests/forget-2.jsonl"):
        assert (out / f).is_file(), f
    for i in (1, 2):
        for f in ("config.yaml", "metrics.json", "history.json", "model/model.safetensors"):
            assert (out / f"request-{i}" / f).is_file(), (i, f)
    assert not list(tmp_path.glob(".seq.partial-*"))
    source = (micro_assets / "data/forget.jsonl").read_text().splitlines()
    assert [line for i in (1, 2) for line in (out / f"requests/forget-{i}.jsonl").read_text().splitlines()] == source

    # request 2 trained from request 1's model, on its own part; paths name the final folder
    first = yaml.safe_load((out / "request-1/config.yaml").read_text())
    second = yaml.safe_load((out / "request-2/config.yaml").read_text())
    assert first["model"]["name_or_path"] == str(micro_assets / "model")
    assert second["model"]["name_or_path"] == str(out.resolve() / "request-1/model")
    assert second["data"]["forget"] == str(out.resolve() / "requests/forget-2.jsonl")
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["forget"] == [
        str(out.resolve() / f"requests/forget-{i}.jsonl") for i in (1, 2)]
    original = load_file(micro_assets / "model/model.safetensors")
    w1, w2 = (load_file(out / f"request-{i}/model/model.safetensors") for i in (1, 2))
    assert any(not torch.equal(original[k], w1[k]) for k in original)
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)

    seq = json.loads((out / "sequential.json").read_text())
    assert set(seq["original"]["sets"]) == {"1", "2"} and seq["thresholds"] is not None
    assert [sorted(r["sets"]) for r in seq["requests"]] == [["1"], ["1", "2"]]
    for r in seq["requests"]:
        assert r["retain_ppl"] > 1 and r["retain_ppl_ratio"] > 0
        for figs in r["sets"].values():
            assert 0 <= figs["el"] <= 1 and 0 <= figs["ma"] <= 1 and figs["ppl"] > 1
            assert isinstance(figs["below_unseen"], bool)
    metrics2 = json.loads((out / "request-2/metrics.json").read_text())
    assert metrics2["forget_sets"]["2"] == metrics2["after"]["forget"]
    assert seq["requests"][1]["sets"]["1"]["ma"] == metrics2["forget_sets"]["1"]["ma"]
    # the original on set 2 was measured alone: the same figures as request 2's "before"
    assert metrics2["before"]["forget"]["ma"] == seq["original"]["sets"]["2"]["ma"]

    tracker = Tracker(f"sqlite:///{out.resolve() / 'mlflow.db'}")
    exp = tracker.client.get_experiment_by_name("seq")
    runs = tracker.client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get(KIND_TAG) == "sequential"]
    assert len(parents) == 1
    children = tracker.child_runs(exp.experiment_id, parents[0].info.run_id)
    assert sorted(c.data.params["request"] for c in children) == ["1", "2"]
    by_index = {int(c.data.params["request"]): c for c in children}
    assert by_index[2].data.params["forget"] == str(out.resolve() / "requests/forget-2.jsonl")
    assert by_index[2].data.metrics["set1.forget.ma"] == pytest.approx(seq["requests"][1]["sets"]["1"]["ma"])
    assert by_index[2].data.metrics["set2.forget.el3"] == pytest.approx(seq["requests"][1]["sets"]["2"]["el"])
    assert "set2.forget.ma" not in by_index[1].data.metrics
    assert all(c.info.status == "FINISHED" for c in [*children, *parents])
    names = {a.path for a in tracker.client.list_artifacts(parents[0].info.run_id)}
    assert {"sequential.md", "sequential.png", "sequential.json"} <= names


def test_lora_requests_chain_through_the_merged_adapter(micro_assets, tmp_path):
    from orchestrator.sequential import run_sequential
    from trainables.evaluate import load_result_model

    files = halves(micro_assets, tmp_path)
    cfg = from_dict(UnlearnConfig, cheap(micro_assets, lora={"enabled": True, "rank": 4},
                                         train={"lr": 5e-2, "select": "last"},
                                         data={**micro_config(micro_assets)["data"], "forget": files}))
    out = tmp_path / "lora"
    run_sequential(cfg, out, log=lambda *a, **k: None)
    final = out.resolve()
    merged = final / "request-1/merged"
    assert yaml.safe_load((out / "request-2/config.yaml").read_text())["model"]["name_or_path"] == str(merged)
    adapter2 = json.loads((out / "request-2/model/adapter_config.json").read_text())
    assert adapter2["base_model_name_or_path"] == str(merged)  # the final path, not the stage's
    base = load_file(micro_assets / "model/model.safetensors")
    m1 = load_file(merged / "model.safetensors")
    via_adapter = load_result_model(out / "request-1/model").state_dict()
    assert all(torch.allclose(m1[k], via_adapter[k]) for k in m1)  # merged = adapter 1 on the original
    assert any(not torch.allclose(base[k], m1[k]) for k in base)
    r2 = load_result_model(out / "request-2/model").state_dict()  # loads from the moved folder
    assert any(not torch.allclose(m1[k], r2[k]) for k in m1)
    assert not (out / "request-2/merged").exists()  # the last request needs no next base
    seq = json.loads((out / "sequential.json").read_text())
    assert sorted(seq["requests"][1]["sets"]) == ["1", "2"]


def test_refusals_and_failures_leave_nothing(micro_assets, tmp_path, monkeypatch):
    import orchestrator.unlearn
    from orchestrator.sequential import run_sequential

    files = halves(micro_assets, tmp_path)
    raw = cheap(micro_assets)
    bad = from_dict(UnlearnConfig, {**raw, "data": {**raw["data"], "forget": [files[0], str(tmp_path / "no.jsonl")]}})
    with pytest.raises(InputError, match="^data.forget: .*no.jsonl"):
        run_sequential(bad, tmp_path / "o1", log=lambda *a, **k: None)
    assert not (tmp_path / "o1").exists()
    cfg = from_dict(UnlearnConfig, {**raw, "data": {**raw["data"], "forget": files}})
    with pytest.raises(InputError, match="^--split-forget: cuts one forget file"):
        run_sequential(cfg, tmp_path / "o2", split=2, log=lambda *a, **k: None)
    calls = []
    real = orchestrator.unlearn.run_job

    def failing(*args, **kwargs):  # request 1 trains, then the next job dies
        calls.append(args[3])
        if len(calls) == 2:
            raise RuntimeError("worker died")
        return real(*args, **kwargs)

    monkeypatch.setattr(orchestrator.unlearn, "run_job", failing)
    with pytest.raises(RuntimeError, match="worker died"):
        run_sequential(cfg, tmp_path / "o3", log=lambda *a, **k: None)
    assert calls[0]["evaluate_original"] and not (tmp_path / "o3").exists()
    assert not list(tmp_path.glob(".o3.partial-*"))
