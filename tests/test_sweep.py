"""Sweeps: the search-space model and its validation, and end to end on the micro model:
Ray Tune + Optuna trials on Ray Train, MLflow read back through MlflowClient, a failing trial,
and resume after the driver process is killed mid-sweep."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import micro_config
from orchestrator.objectives import final_metrics
from orchestrator.space import apply_params, load_space, space_from_dict
from trainables.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))

PARAMS = {
    "method.gamma": {"distribution": "loguniform", "low": 1, "high": 50},
    "train.lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-2},
    "method.subset.policy": {"distribution": "choice", "values": ["all", "spans"]},
    "lora.rank": {"distribution": "choice", "values": [0, 4]},
    "run.fail_at_step": {"distribution": "choice", "values": [None, 1]},  # test hook: a dead worker
}


def micro_space(root: Path, **over) -> dict:
    base = micro_config(root, train={"lr": 1e-3, "max_steps": 3, "batch_size": 4, "eval_every": 3, "seed": 0,
                                     "log_every": 100},
                        eval={"el_n": [3], "prefix_stride": 8, "batch_size": 8, "mia": False,
                              "mauve": {"enabled": True, "max_prompts": 12, "prompt_tokens": 6, "new_tokens": 6}})
    space = {"name": "micro", "base": base, "parameters": copy.deepcopy(PARAMS),
             "objectives": [{"name": "el3", "mode": "min"}, {"name": "mauve", "mode": "max"}],
             "constraints": ["retain_ppl_ratio <= 1000"], "report": ["forget.ma"],
             "budget": {"num_samples": 3, "max_concurrent_trials": 2, "seed": 0, "max_failures": 0}}
    space.update(over)
    return space


def point(gamma=10.0, lr=1e-3, policy="all", rank=0, fail=None):
    return {"method.gamma": gamma, "train.lr": lr, "method.subset.policy": policy, "lora.rank": rank,
            "run.fail_at_step": fail}


# --------------------------------------------------------------------------------------------
# The search-space model (no Ray)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_spaces_load(path):
    space = load_space(path)
    assert space.parameters and [o.name for o in space.objectives][:2] == ["el3", "mauve"]
    again = space_from_dict(yaml.safe_load(space.dump()))
    assert again.to_dict() == space.to_dict()


def test_demo_space_shape():
    space = load_space(ROOT / "search_spaces" / "demo.yaml")
    keys = {p.key for p in space.parameters}
    assert {"method.gamma", "train.lr", "method.subset.policy", "lora.rank"} <= keys
    assert space.param("lora.rank").values[0] == 0 and space.budget.num_samples >= 8
    assert space.param("method.gamma").distribution == "loguniform"
    # the user's pair with held-out perplexity, and privacy against the retain model (two-sided)
    assert [o.name for o in space.objectives] == ["el3", "mauve", "retain_ppl_ratio", "privleak_abs.loss"]
    assert {"privleak.loss", "forget_quality"} <= set(space.report)
    assert space.param("method.subset.tau").when == {"method.subset.policy": ["reference"]}


def test_overrides_route_to_the_base_and_the_space(micro_assets):
    space = space_from_dict(micro_space(micro_assets), ["train.max_steps=7", "budget.num_samples=5",
                                                        "parameters.method.gamma.high=20",
                                                        "parameters.train.lr={distribution: choice, values: [0.001]}"])
    assert space.base["train"]["max_steps"] == 7 and space.budget.num_samples == 5
    assert space.param("method.gamma").high == 20
    assert space.param("train.lr").values == [0.001]


def test_lora_rank_is_conditional_full_finetuning_at_zero(micro_assets):
    base = space_from_dict(micro_space(micro_assets)).base
    assert apply_params(base, {"lora.rank": 0})["lora"]["enabled"] is False
    assert apply_params(base, {"lora.rank": False})["lora"]["enabled"] is False
    on = apply_params(base, {"lora.rank": 8})
    assert on["lora"] == {**base["lora"], "enabled": True, "rank": 8}


def test_define_by_run_samples_conditionals_only_when_active(micro_assets):
    import optuna

    from orchestrator.search import DefineByRun

    params = dict(PARAMS)
    params["lora.alpha"] = {"distribution": "uniform", "low": 8, "high": 32, "when": {"lora.enabled": True}}
    params["method.subset.tau"] = {"distribution": "uniform", "low": 0.5, "high": 2,
                                   "when": {"method.subset.policy": "reference"}}
    space = space_from_dict(micro_space(micro_assets, parameters=params))
    fn = DefineByRun(space.parameters, space.base)
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen_alpha = {True: 0, False: 0}
    for _ in range(30):
        trial = study.ask()
        fn(trial)
        assert "method.subset.tau" not in trial.params  # 'reference' is never sampled here
        lora_on = trial.params["lora.rank"] != 0
        assert ("lora.alpha" in trial.params) == lora_on
        seen_alpha[lora_on] += 1
        study.tell(trial, [0.5, 0.5])
    assert seen_alpha[True] and seen_alpha[False]


@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "bogus: unknown key"),
    ({"parameters": {"method.gamma": {"distribution": "loguniform", "low": 0, "high": 50}}},
     "parameters.method.gamma.low: must be > 0 for loguniform"),
    ({"parameters": {"method.gamma": {"distribution": "uniform", "low": 5, "high": 5}}},
     "parameters.method.gamma.high: must be > low"),
    ({"parameters": {"method.gama": {"distribution": "uniform", "low": 1, "high": 5}}},
     "parameters.method.gama: not a config key"),
    ({"parameters": {"method.gamma": {"distribution": "normal", "low": 1, "high": 5}}},
     "parameters.method.gamma.distribution"),
    ({"parameters": {"method.gamma": {"distribution": "uniform", "low": 1, "high": 5, "mean": 2}}},
     "parameters.method.gamma.mean: unknown key"),
    ({"parameters": {"method.gamma": {"distribution": "choice", "values": []}}},
     "parameters.method.gamma.values"),
    ({"parameters": {"train.lr": {"distribution": "uniform", "low": -1, "high": 1}}},
     "parameters.train.lr: value -1"),
    ({"parameters": {"method.subset.policy": {"values": ["all", "reference"]}}},
     "parameters.method.subset.policy: value 'reference'"),
    ({"parameters": {"train.max_steps": {"distribution": "int", "low": 1.5, "high": 9}}},
     "parameters.train.max_steps.low: expected an integer"),
    ({"parameters": {"lora.alpha": {"distribution": "uniform", "low": 1, "high": 9, "when": {"lora.nope": True}}}},
     "parameters.lora.alpha.when.lora.nope"),
    ({"objectives": [{"name": "el7", "mode": "min"}]}, "objectives[0]: el7 needs 7 in the base config's eval.el_n"),
    ({"objectives": [{"name": "happiness", "mode": "max"}]}, "objectives[0].name: unknown metric 'happiness'"),
    ({"objectives": [{"name": "el3"}, {"name": "mauve_sd", "mode": "min"}]},
     "objectives[1]: 'mauve_sd' needs eval.mauve.draws >= 2 in the base config"),
    ({"objectives": [{"name": "el3", "mode": "down"}]}, "objectives[0].mode"),
    ({"objectives": [{"name": "el3"}, {"name": "el3"}]}, "objectives[1].name: objective 'el3' given twice"),
    ({"constraints": ["retain_ppl_ratio ~ 1.1"]}, "constraints[0]: expected 'METRIC <= NUMBER'"),
    ({"budget": {"num_samples": 0}}, "budget.num_samples: expected an integer >= 1"),
    ({"budget": {"sampler": "grid"}}, "budget.sampler"),
    ({"budget": {"sampler_options": {"population": 4}}}, "budget.sampler_options.population: unknown option"),
    ({"budget": {"trials": 4}}, "budget.trials: unknown key"),
    ({"tracking": {"log_models": "some"}}, "tracking.log_models"),
    ({"initial_points": [{"method.gamma": 500.0}]}, "initial_points[0].method.gamma: 500.0 is outside"),
    ({"initial_points": [{"method.gamma": 5.0}]}, "initial_points[0]: no value for parameter train.lr"),
    ({"report": "forget.ma"}, "report: expected a list"),
    ({"report": ["happiness"]}, "report[0]: unknown metric 'happiness'"),
    ({"report": ["forget.el7"]}, "report[0]: el7 needs 7 in the base config's eval.el_n"),
    ({"report": ["privleak.loss"]}, "report[0]: 'privleak.loss' needs"),
    ({"report": ["el3"]}, "report[0]: 'el3' is already an objective"),
    ({"report": ["forget.ma", "forget.ma"]}, "report[1]: 'forget.ma' is already listed"),
])
def test_validation_names_the_key(micro_assets, change, message):
    raw = micro_space(micro_assets)
    if "parameters" in change:
        raw["parameters"] = {**raw["parameters"], **change.pop("parameters")}
    raw.update(change)
    with pytest.raises(InputError) as err:
        space_from_dict(raw)
    assert message in str(err.value), str(err.value)


def test_mauve_sd_is_an_objective_with_draws(micro_assets):
    raw = micro_space(micro_assets)
    raw["base"]["eval"]["mauve"].update(draws=2, do_sample=True)
    raw["objectives"] = [{"name": "el3", "mode": "min"}, {"name": "mauve_sd", "mode": "min"}]
    assert [o.name for o in space_from_dict(raw).objectives][1] == "mauve_sd"


def test_base_errors_name_the_base_key(micro_assets, tmp_path):
    raw = micro_space(micro_assets)
    raw["base"]["train"]["lr"] = -1
    with pytest.raises(InputError, match=r"^base\.train\.lr"):
        space_from_dict(raw)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**micro_space(micro_assets), "base_config": "missing.yaml"}))
    with pytest.raises(InputError, match="base_config: missing.yaml not found"):
        load_space(path)


def test_cli_refuses_a_bad_space_in_one_line(micro_assets, tmp_path, capsys):
    from orchestrator.cli import main

    path = tmp_path / "space.yaml"
    raw = micro_space(micro_assets)
    raw["parameters"]["method.gamma"] = {"distribution": "loguniform", "low": -1, "high": 5}
    path.write_text(yaml.safe_dump(raw))
    assert main(["sweep", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: parameters.method.gamma.low: must be > 0 for loguniform, got -1"]
    assert not (tmp_path / "out").exists()


def test_searcher_tells_optuna_values_constraints_and_failures(micro_assets, tmp_path):
    """UndialOptunaSearch through Tune's Searcher API (no Tune run): the initial point first,
    Tune trial ids on the Optuna trials, constraints recorded, NaN / errored trials FAIL, a
    second completion ignored; Optuna's own front (Study.best_trials) agrees with ours."""
    import optuna

    from orchestrator.pareto import front_table
    from orchestrator.search import build_searcher

    raw = micro_space(micro_assets, initial_points=[point(gamma=5.0)],
                      budget={"num_samples": 4, "max_concurrent_trials": 4, "seed": 0})
    space = space_from_dict(raw)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = build_searcher(space, url)
    configs = {tid: searcher.suggest(tid) for tid in "abcd"}
    assert configs["a"] == point(gamma=5.0)
    for config in configs.values():
        assert set(config) == set(PARAMS) and 1 <= config["method.gamma"] <= 50
    reports = {"a": {"el3": 0.2, "mauve": 0.5, "constraint_violations": [-1.0]},
               "b": {"el3": 0.1, "mauve": 0.4, "constraint_violations": [-2.0]},
               "c": {"el3": 0.3, "mauve": 0.3, "constraint_violations": [-0.5]}}  # dominated by a
    for tid, report in reports.items():
        searcher.on_trial_complete(tid, report)
    searcher.on_trial_complete("d", {"el3": math.nan, "mauve": 0.9, "constraint_violations": [0.0]})
    searcher.on_trial_complete("a", {"el3": 0.9, "mauve": 0.0})  # told already: ignored
    study = optuna.load_study(study_name="micro", storage=url)
    by_tune = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert sorted(by_tune) == list("abcd") and len(study.trials) == 4
    assert by_tune["a"].state.name == "COMPLETE" and by_tune["a"].values == [0.2, 0.5]
    constraints = by_tune["a"].constraints  # Optuna 5: named by the constraint; 4: constraints_func's list
    assert constraints == ({"retain_ppl_ratio <= 1000": -1.0} if isinstance(constraints, dict) else [-1.0])
    assert by_tune["a"].user_attrs["constraints"] == [-1.0]
    assert by_tune["d"].state.name == "FAIL" and by_tune["d"].values is None
    ours = {r["trial_id"] for r in front_table([{"trial_id": k, **v} for k, v in reports.items()],
                                               space.objective_list)}
    assert {t.user_attrs["tune_trial_id"] for t in study.best_trials} == ours == {"a", "b"}


def test_final_metrics_objectives_ratio_and_constraints(micro_assets):
    raw = micro_space(micro_assets, constraints=["retain_ppl_ratio <= 1.1", {"metric": "mauve", "min": 0.5}])
    space = space_from_dict(raw)
    before = {"forget": {"el3": 0.5}, "retain": {"ppl": 10.0}, "mauve": 0.9}
    ok = final_metrics(space, {"forget": {"el3": 0.1}, "retain": {"ppl": 10.5}, "mauve": 0.8}, before)
    assert ok["el3"] == 0.1 and ok["mauve"] == 0.8 and ok["retain_ppl_ratio"] == pytest.approx(1.05)
    assert ok["feasible"] and ok["constraint_violations"] == pytest.approx([-0.05, -0.3])
    bad = final_metrics(space, {"forget": {"el3": 0.1}, "retain": {"ppl": 12.0}, "mauve": float("nan")}, before)
    assert not bad["feasible"] and bad["constraint_violations"][1] == math.inf


def test_reported_metrics_are_measured_not_optimised(micro_assets):
    """`report:` names metrics the sweep shows beside its objectives: each trial's value (a ratio
    too), in the canonical space, and not among Optuna's objectives."""
    space = space_from_dict(micro_space(micro_assets, report=["forget.ma", "retain_ppl_ratio"]))
    assert space.report == ["forget.ma", "retain_ppl_ratio"] and [o.name for o in space.objectives] == ["el3", "mauve"]
    assert space_from_dict(yaml.safe_load(space.dump())).report == space.report
    got = final_metrics(space, {"forget": {"el3": 0.1, "ma": 0.4}, "retain": {"ppl": 11.0}, "mauve": 0.8},
                        {"retain": {"ppl": 10.0}})
    assert got["forget.ma"] == 0.4 and got["retain_ppl_ratio"] == pytest.approx(1.1)
    assert math.isnan(final_metrics(space, {"forget": {"el3": 0.1}}, None)["forget.ma"])  # absent, not zero


def test_orphaned_trial_folders_leave_the_folder_count(micro_assets, tmp_path):
    """A trial folder the resumed Tune never knew is marked orphaned at the sweep's end, and the
    sweep folder read on its own (`undial pareto DIR`) then counts what the summary counts."""
    from orchestrator.results import ORPHANED, mark_orphans, sweep_front
    from orchestrator.sweep import SweepPaths

    space = space_from_dict(micro_space(micro_assets))
    (tmp_path / "space.yaml").write_text(space.dump())
    for trial_id, status in (("done1", "done"), ("lost2", "running")):
        (tmp_path / "trials" / trial_id).mkdir(parents=True)
        (tmp_path / "trials" / trial_id / "status.json").write_text(json.dumps({"status": status, "params": {}}))
    (tmp_path / "trials" / "done1" / "result.json").write_text(json.dumps(
        {"objectives": {"el3": 0.1, "mauve": 0.5, "feasible": True}}))
    assert [r["status"] for r in sweep_front(tmp_path)[1]] == ["ok", "unfinished"]
    assert mark_orphans(SweepPaths(tmp_path), {"done1"}) == ["lost2"]
    saved = json.loads((tmp_path / "trials" / "lost2" / "status.json").read_text())
    assert saved["status"] == ORPHANED and saved["was"] == "running"
    assert [r["trial_id"] for r in sweep_front(tmp_path)[1]] == ["done1"]
    assert mark_orphans(SweepPaths(tmp_path), {"done1"}) == []  # once


# --------------------------------------------------------------------------------------------
# End to end (Ray, MLflow, Optuna): one 3-trial sweep whose driver is killed after the first
# trial finished, then resumed; the tests below read what it left behind.


def _sweep_process(space_path: Path, out: Path, ray_tmp: str, log_path: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, UNDIAL_RAY_TMPDIR=ray_tmp, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONUNBUFFERED="1", TUNE_GLOBAL_CHECKPOINT_S="2")
    env.pop("RAY_ADDRESS", None)
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(space_path), "--output", str(out),
                             *extra], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=ROOT)


def _processes_using(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            pids.append(int(proc.name))
    return pids


def _kill_session(proc: subprocess.Popen, ray_tmp: str) -> None:
    """SIGKILL the driver's process group, then any leftover process of its Ray (found by the
    Ray temp dir this test made for it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline:
        left = [p for p in _processes_using(ray_tmp) if p != os.getpid()]
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1)


def _attempts(out: Path, trial_id: str) -> list[dict]:
    return [json.loads(line) for line in (out / "trials" / trial_id / "attempts.log").read_text().splitlines()]


@pytest.fixture(scope="module")
def resumed_sweep(micro_assets, tmp_path_factory):
    """3 trials, 2 at a time: one raises (run.fail_at_step before any checkpoint), two train.
    The driver is SIGKILLed once a trial has finished, then `undial sweep --resume` completes it."""
    tmp = tmp_path_factory.mktemp("sweep")
    raw = micro_space(micro_assets, initial_points=[point(fail=1), point(gamma=5.0, lr=1e-3),
                                                    point(gamma=20.0, lr=3e-3, rank=4)])
    space_path = tmp / "space.yaml"
    space_path.write_text(yaml.safe_dump(raw))
    out = tmp / "sweep"
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    proc = _sweep_process(space_path, out, ray_tmp, tmp / "first.log")
    try:
        deadline = time.time() + 400
        while time.time() < deadline and not list(out.glob("trials/*/result.json")):
            assert proc.poll() is None, (tmp / "first.log").read_text()[-3000:]
            time.sleep(1)
        assert list(out.glob("trials/*/result.json")), "no trial finished in time"
        time.sleep(5)  # Tune saves its experiment state every 2 s here (TUNE_GLOBAL_CHECKPOINT_S)
        killed_while_running = proc.poll() is None
    finally:
        _kill_session(proc, ray_tmp)
    done_before = {p.parent.name for p in out.glob("trials/*/result.json")}

    ray_tmp2 = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    proc = _sweep_process(space_path, out, ray_tmp2, tmp / "resume.log", "--resume")
    try:
        rc = proc.wait(timeout=500)
    finally:
        if proc.poll() is None:
            _kill_session(proc, ray_tmp2)
    log = (tmp / "resume.log").read_text()
    state = json.loads((out / "sweep.json").read_text())
    return {"out": out, "rc": rc, "log": log, "done_before": done_before, "state": state,
            "killed_while_running": killed_while_running, "summary": json.loads((out / "summary.json").read_text())
            if (out / "summary.json").is_file() else None, "tmp": tmp}


def _runs(state):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(state["tracking_uri"])
    exp = client.get_experiment_by_name("micro")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("undial.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    return client, exp, runs, parents, children


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(resumed_sweep):
    s = resumed_sweep
    assert s["rc"] == 0, s["log"][-4000:]
    assert s["killed_while_running"] and 1 <= len(s["done_before"]) < 3
    assert "resuming the Tune experiment" in s["log"]
    out = s["out"]
    trials = sorted(p.name for p in (out / "trials").iterdir())
    assert len(trials) == 3
    for trial_id in s["done_before"]:  # a trial that had finished never trained again
        assert [a["kind"] for a in _attempts(out, trial_id)].count("run") == 1
    summary = s["summary"]
    assert summary["trials"] == 3 and summary["complete"]
    assert summary["counts"]["ok"] + summary["counts"]["infeasible"] == 2
    client, exp, runs, parents, children = _runs(s["state"])
    assert len(parents) == 1 and len(children) == 3 and len(runs) == 4  # no duplicate MLflow runs
    assert sorted(c.data.tags["tune_trial_id"] for c in children) == trials
    for child in children:
        if child.info.status == "FINISHED":  # per-step metrics: steps 1..3 (a restarted trial repeats some)
            assert {m.step for m in client.get_metric_history(child.info.run_id, "train.loss")} == {1, 2, 3}


@pytest.mark.slow
def test_a_trial_that_raises_is_recorded_failed_and_the_sweep_completes(resumed_sweep):
    import optuna

    s = resumed_sweep
    assert s["summary"]["counts"]["failed"] == 1
    _, _, _, _, children = _runs(s["state"])
    failed = [c for c in children if c.info.status == "FAILED"]
    assert len(failed) == 1 and failed[0].data.params["run.fail_at_step"] == "1"
    assert "fail_at_step" in failed[0].data.tags["error"]
    assert "fail_at_step" in (s["out"] / "trials" / failed[0].data.tags["tune_trial_id"] / "error.txt").read_text()
    study = optuna.load_study(study_name="micro", storage=s["state"]["optuna_storage"])
    by_tune = {t.user_attrs.get("tune_trial_id"): t for t in study.trials}
    assert by_tune[failed[0].data.tags["tune_trial_id"]].state.name == "FAIL"
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2 and all(t.constraints for t in complete)  # Optuna's constraint values


@pytest.mark.slow
def test_mlflow_parent_children_params_metrics_tags_artifacts(resumed_sweep):
    s = resumed_sweep
    summary, state = s["summary"], s["state"]
    assert state["tracking_uri"] == f"sqlite:///{s['out'].resolve() / 'mlflow.db'}"
    client, exp, runs, parents, children = _runs(state)
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags.get("undial.version")
    assert "git.commit" in parent.data.tags and parent.data.params["space.method.gamma"] == "loguniform[1, 50]"
    assert parent.data.metrics["hypervolume"] == pytest.approx(summary["hypervolume"]) and summary["hypervolume"] > 0
    assert parent.data.metrics["n_failed"] == 1 and "original.forget.el3" in parent.data.metrics
    assert {"space.yaml", "base_config.yaml", "pareto", "trials.csv", "original"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")} == {
        f"pareto/pareto_front.{e}" for e in ("csv", "json", "png", "html")}
    for ext in ("csv", "json", "png", "html"):
        assert (s["out"] / "pareto" / f"pareto_front.{ext}").stat().st_size > 0

    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    finished = [c for c in children if c.info.status == "FINISHED"]
    front_ids = {r["trial_id"] for r in summary["front"]}
    assert len(finished) == 2 and front_ids
    for child in finished:
        run_id = child.info.run_id
        assert set(child.data.params) >= {"method.gamma", "train.lr", "method.subset.policy", "lora.rank"}
        assert {"el3", "mauve", "retain_ppl_ratio", "after.forget.ma", "after.retain.ppl"} <= set(child.data.metrics)
        # evaluations during training (step 0 = the original) and the per-step curve
        assert sorted(m.step for m in client.get_metric_history(run_id, "train.forget.ma")) == [0, 3]
        assert sorted(m.step for m in client.get_metric_history(run_id, "train.grad_norm")) == [1, 2, 3]
        files = {a.path for a in client.list_artifacts(run_id)}
        on_front = child.data.tags["tune_trial_id"] in front_ids
        assert child.data.tags["pareto"] == str(on_front).lower()
        assert {"config.yaml", "metrics.json"} <= files and (("model" in files) == on_front)
    pareto_runs = client.search_runs([exp.experiment_id], filter_string="tags.pareto = 'true'")
    assert {r.info.run_id for r in pareto_runs} == {r["run_id"] for r in summary["front"]}


@pytest.mark.slow
def test_pareto_and_export_commands(resumed_sweep, tmp_path, capsys):
    from orchestrator.cli import main
    from trainables.config import load_config

    s = resumed_sweep
    capsys.readouterr()
    assert main(["pareto", str(s["out"])]) == 0
    printed = capsys.readouterr().out
    assert "Pareto front (el3" in printed and "1 failed" in printed and "hypervolume" in printed
    header = next(line for line in printed.splitlines() if line.startswith("trial_id")).split()
    assert header.index("forget.ma") < header.index("method.gamma")  # reported metrics, then the parameters
    with open(s["out"] / "trials.csv") as f:
        done = [r for r in csv.DictReader(f) if r["status"] in ("ok", "infeasible")]
    assert done and all(0 <= float(r["forget.ma"]) <= 1 for r in done)
    _, _, _, parents, children = _runs(s["state"])
    chosen = next(c for c in children if c.info.status == "FINISHED" and c.data.params["lora.rank"] == "4")
    exported = tmp_path / "exported.yaml"
    assert main(["export", chosen.info.run_id, "--output", str(exported), "--sweep", str(s["out"])]) == 0
    cfg = load_config(exported)
    assert cfg.lora.enabled and cfg.lora.rank == 4 and cfg.method.gamma == 20.0 and cfg.train.lr == 3e-3
    assert main(["export", parents[0].info.run_id, "--output", str(tmp_path / "x.yaml"),
                 "--tracking-uri", s["state"]["tracking_uri"]]) == 2
    assert "sweep's parent run" in capsys.readouterr().err
