"""`undial study`: every method beside UnDIAL over a learning-rate grid spanning 10x, the
dynamics of forgetting and of model quality along training, and a report.

One trial per method x lr, run through the sweep's machinery: the original model is evaluated
once (orchestrator.sweep.evaluate_original), each trial is the sweep's Tune function trainable
(orchestrator.trial.run_trial: a Ray Train job that trains, evaluates the selected model where
it is and saves it), MLflow holds one parent run and a child run per trial; a grid takes the
place of the Optuna searcher. The trials run with `train.watch: full` (unless the config says
otherwise), so every eval step records the whole evaluation (EL_n, MA, MIA AUC, MAUVE, held-out
perplexity); the training result's `history` (DIR/trials/<id>/train_result.json) is each
trial's curve.

Per method, the one hyperparameter that would make two baselines the same is set: gradient
ascent and RMU run as published, without the NLL retain term (GA with it *is* GradDiff);
GradDiff takes the config's method.retain_weight, 1.0 when that is 0; UnDIAL, NPO and SimNPO
take the config's.

Study folder (DIR):

    study.json  study.md  plots/dynamics.png         the report (also on the MLflow parent run)
    space.yaml  sweep.json  base_config.yaml  mlflow.db  mlartifacts/  original/metrics.json
    trials/<trial id>/   config.yaml, train_result.json (history), metrics.json, model/, ...
    ray/tune/            Tune's experiment
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from trainables.config import METHOD_NAMES, UnlearnConfig, apply_overrides, from_dict, read_yaml
from trainables.errors import InputError
from trainables.tree import get_path, numeric

DEFAULT_METHODS = ("undial", "gradient_ascent", "graddiff", "npo", "simnpo", "rmu")
NO_RETAIN_TERM = ("gradient_ascent", "rmu")  # as published: GA + NLL retain is GradDiff
PPL_TOLERANCE = 1.10                        # "held-out perplexity within 10% of the original"
# `undial study --demo`: a whole evaluation of the demo model costs ~10x the light watch
# (measured 370 s vs 37 s on 2 busy cores: EL3/EL10 at prefix stride 1, the attacks, MAUVE on
# 200 prompts); 18 trials of the demo's 400 steps evaluated every 25 would take a day.
DEMO_OVERRIDES = ("train.max_steps=200", "train.eval_every=50")
# Keys of a final evaluation shown beside the main columns where present (other features add
# them: the relearning attack, the privacy metrics: AUC per attack, privleak, forget quality).
EXTRA_PREFIXES = ("relearn", "privleak", "privleak_abs", "forget_quality", "mia", "mia_auc")


# --------------------------------------------------------------------------------------------
# The grid (pure)


def lr_grid(lr: float) -> list[float]:
    """Three learning rates spanning 10x around `lr`: lr/sqrt(10), lr, lr*sqrt(10)."""
    root = math.sqrt(10.0)
    return [lr / root, lr, lr * root]


def parse_methods(text: str | None) -> list[str]:
    """`--methods a,b` -> the method names (default: every baseline beside UnDIAL)."""
    if text is None:
        return list(DEFAULT_METHODS)
    names = [t.strip() for t in text.split(",")]
    if not any(names):
        raise InputError(f"--methods: expected a comma-separated list of methods ({', '.join(METHOD_NAMES)}), "
                         f"got {text!r}")
    for name in names:
        if name not in METHOD_NAMES:
            raise InputError(f"--methods: unknown method {name!r} (choose from {', '.join(METHOD_NAMES)})")
    if len(set(names)) != len(names):
        raise InputError(f"--methods: a method is given twice in {text!r}")
    return names


def parse_lrs(text: str | None, base_lr: float) -> list[float]:
    """`--lrs 1e-4,3e-4,1e-3` -> the learning rates (default: lr_grid of the config's train.lr)."""
    if text is None:
        return lr_grid(base_lr)
    out = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise InputError(f"--lrs: expected comma-separated numbers > 0, got {item.strip()!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"--lrs: expected comma-separated numbers > 0, got {item.strip()!r}")
        out.append(value)
    if len(set(out)) != len(out):
        raise InputError(f"--lrs: a learning rate is given twice in {text!r}")
    return out


def retain_weight_for(method: str, base_weight: float) -> float:
    """The retain NLL weight a method runs with in a study (see the module docstring)."""
    if method in NO_RETAIN_TERM:
        return 0.0
    if method == "graddiff" and base_weight <= 0:
        return 1.0
    return base_weight


def study_points(base: Mapping, methods: Sequence[str], lrs: Sequence[float]) -> list[dict]:
    """One trial's params per method x lr, each checked to give a valid run config (refused in one
    line naming --methods / --lrs)."""
    from orchestrator.space import apply_params

    base_weight = float(get_path(base, "method.retain_weight") or 0.0)
    points = []
    for method in methods:
        for lr in lrs:
            point = {"method.name": method, "train.lr": float(lr),
                     "method.retain_weight": retain_weight_for(method, base_weight)}
            try:
                from_dict(UnlearnConfig, apply_params(base, point))
            except InputError as exc:
                raise InputError(f"--methods: {method} (lr {lr:g}) gives an invalid run config: {exc}") from None
            points.append(point)
    return points


def load_study_base(config_path: str | None, overrides: Sequence[str], demo: bool) -> dict:
    """The study's base run config (plain, demo paths kept): the config file (or the demo's, with
    DEMO_OVERRIDES) + overrides, validated; `train.watch: full` unless the config sets it."""
    from orchestrator.unlearn import DEMO_CONFIG

    if demo:
        if config_path is not None:
            raise InputError("give either CONFIG.yaml or --demo, not both")
        config_path = str(DEMO_CONFIG)
        overrides = [*DEMO_OVERRIDES, *overrides]
    if config_path is None:
        raise InputError("CONFIG.yaml: a run config is needed (or --demo)")
    raw = read_yaml(config_path)
    apply_overrides(raw, list(overrides))
    train = raw.get("train")
    if not (isinstance(train, dict) and "watch" in train):
        raw.setdefault("train", {})
        if isinstance(raw["train"], dict):
            raw["train"]["watch"] = "full"
    return from_dict(UnlearnConfig, raw).to_dict()


def study_name(output: str | Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(output).resolve().name).strip("-.")
    return name if name and name[0].isalnum() else "study"


def build_study_space(base: dict, methods: Sequence[str], lrs: Sequence[float], name: str,
                      max_concurrent: int = 1):
    """The SearchSpace the sweep's trial runner reads: the base, the grid's parameters (for the
    record: the grid itself goes to Tune), objectives the base measures, no model logging."""
    from orchestrator.space import Budget, ObjectiveSpec, Param, SearchSpace, TrackingConfig

    base_weight = float(get_path(base, "method.retain_weight") or 0.0)
    weights = sorted({retain_weight_for(m, base_weight) for m in methods})
    n = el_n(base)
    objectives = [ObjectiveSpec(f"el{n}", "min", f"el{n}"), ObjectiveSpec("forget.ma", "min", "forget.ma")]
    parameters = [Param("method.name", "choice", values=list(methods)),
                  Param("train.lr", "choice", values=[float(v) for v in lrs]),
                  Param("method.retain_weight", "choice", values=weights)]
    budget = Budget(num_samples=len(methods) * len(lrs), max_concurrent_trials=max_concurrent,
                    sampler="random", max_failures=0)
    return SearchSpace(name=name, base=base, parameters=parameters, objectives=objectives, budget=budget,
                       tracking=TrackingConfig(experiment=name, log_models="none"),
                       description=f"undial study: {', '.join(methods)} x lr {', '.join(f'{v:g}' for v in lrs)}")


def el_n(base: Mapping) -> int:
    """The EL_n the study reports: EL3 where measured (the paper's), else the first of eval.el_n."""
    ns = list(get_path(base, "eval.el_n") or [3])
    return 3 if 3 in ns else int(ns[0])


def expected_eval_steps(max_steps: int, eval_every: int) -> list[int]:
    """The steps of a curve that ran to the end: 0 (the original), every eval_every, the last."""
    return sorted({0, *range(eval_every, max_steps + 1, eval_every), max_steps})


# --------------------------------------------------------------------------------------------
# The report (pure: trial records in, text / JSON / PNG out)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def mia_key(report: Mapping) -> str | None:
    """Where a report holds its MIA AUC: `mia_auc`, or the first `mia_auc.*` (a nested report)."""
    flat = numeric(report)
    if "mia_auc" in flat:
        return "mia_auc"
    nested = sorted(k for k in flat if k.startswith("mia_auc."))
    return ("mia_auc.loss" if "mia_auc.loss" in nested else nested[0]) if nested else None


def main_columns(n: int) -> list[tuple[str, str]]:
    """(report key, header) of the study's main figures; MIA AUC is looked up per report."""
    return [(f"forget.el{n}", f"forget EL{n}"), ("forget.ma", "forget MA"), ("mia", "MIA AUC"),
            ("mauve", "MAUVE"), ("retain.ppl", "held-out ppl")]


def thresholds(original: Mapping, n: int) -> dict[str, float] | None:
    """The unseen set's EL_n and MA on the original model (None without an unseen set)."""
    el, ma = _num(get_path(original, f"unseen.el{n}")), _num(get_path(original, "unseen.ma"))
    if el is None or ma is None:
        return None
    return {f"forget.el{n}": el, "forget.ma": ma}


def verdict(after: Mapping, original: Mapping, n: int) -> dict:
    """Whether a model reaches the unseen-set thresholds (forget EL_n and MA at or below the
    unseen set's) with held-out perplexity within 10% of the original's."""
    limits = thresholds(original, n)
    ppl, ppl0 = _num(get_path(after, "retain.ppl")), _num(get_path(original, "retain.ppl"))
    ratio = ppl / ppl0 if ppl is not None and ppl0 else None
    out: dict[str, Any] = {"retain_ppl_ratio": ratio, "ppl_within_10pct": ratio is not None and ratio <= PPL_TOLERANCE}
    if limits is None:
        out.update(reaches_thresholds=None, success=None)
        return out
    reached = all((v := _num(get_path(after, k))) is not None and v <= limit for k, limit in limits.items())
    out.update(reaches_thresholds=reached, success=reached and out["ppl_within_10pct"])
    return out


def extra_keys(reports: Iterable[Mapping], skip: Iterable[str] = ()) -> list[str]:
    """Keys of the final evaluations under EXTRA_PREFIXES (relearn.*, privleak.*, ...), in order."""
    skip = set(skip)
    seen: dict[str, None] = {}
    for report in reports:
        for key in numeric(report):
            if key not in skip and (key.split(".")[0] in EXTRA_PREFIXES) and key not in seen:
                seen[key] = None
    return list(seen)


def final_figures(after: Mapping, original: Mapping, n: int, extras: Sequence[str]) -> dict:
    flat = numeric(after)
    mia = mia_key(after)
    out = {f"forget.el{n}": flat.get(f"forget.el{n}"), "forget.ma": flat.get("forget.ma"),
           "mia_auc": flat.get(mia) if mia else None, "mauve": flat.get("mauve"),
           "retain.ppl": flat.get("retain.ppl")}
    out.update(verdict(after, original, n))
    out.update({k: flat.get(k) for k in extras})
    return out


def curve_panels(n: int, mia: str | None) -> list[tuple[str, str]]:
    """(history key, title) of the dynamics plot's panels."""
    return [(f"forget.el{n}", f"forget EL{n}"), ("forget.ma", "forget MA"), (mia or "mia_auc", "MIA AUC"),
            ("mauve", "MAUVE"), ("retain.ppl", "held-out perplexity"), ("loss", "training loss")]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
            return f"{value:.2e}"
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def markdown_report(study: Mapping) -> str:
    """study.md: the setup, one row per method x lr (final figures, the verdict), the extras
    (relearning attack, privacy) where the evaluations hold them, per-method conclusions."""
    n = study["el_n"]
    orig = study["original"]
    limits = study.get("thresholds")
    extras = study.get("extra_keys", [])
    lines = [f"# Study {study['name']}", "",
             f"Methods {', '.join(study['methods'])}; learning rates {', '.join(f'{v:.3g}' for v in study['lrs'])}; "
             f"{study['max_steps']} steps, evaluation every {study['eval_every']} (train.watch {study['watch']}), "
             f"model selection `{study['select']}`. Wall time {study['wall_seconds'] / 60:.1f} min.", ""]
    if limits:
        lines.append(f"Thresholds (the original model on the unseen set): EL{n} <= {limits[f'forget.el{n}']:.3f}, "
                     f"MA <= {limits['forget.ma']:.3f}; held-out perplexity within 10% of "
                     f"{_fmt(orig.get('retain.ppl'))}.")
    else:
        lines.append("No unseen set: no thresholds (data.unseen).")
    lines.append("")
    header = ["method", "lr", "status", "step", *[h for _, h in main_columns(n)], "ppl ratio", "thresholds",
              "success"]
    rows = [["original", "", "", 0, orig.get(f"forget.el{n}"), orig.get("forget.ma"), orig.get("mia_auc"),
             orig.get("mauve"), orig.get("retain.ppl"), 1.0, None, None]]
    for t in study["trials"]:
        f = t.get("final") or {}
        rows.append([t["method"], f"{t['lr']:.3g}", t["status"], t.get("best_step"), f.get(f"forget.el{n}"),
                     f.get("forget.ma"), f.get("mia_auc"), f.get("mauve"), f.get("retain.ppl"),
                     f.get("retain_ppl_ratio"), f.get("reaches_thresholds"), f.get("success")])
    lines += ["## Final figures (the selected model)", "",
              "`step`: the step whose weights were kept; `thresholds`: forget EL and MA at or below the unseen "
              "set's; `success`: that, with held-out perplexity within 10%.", ""]
    lines += _table(header, rows)
    if extras:
        lines += ["", "## Relearning attack and privacy (where measured)", ""]
        rows = [["original", "", *[orig.get(k) for k in extras]]]
        rows += [[t["method"], f"{t['lr']:.3g}", *[(t.get("final") or {}).get(k) for k in extras]]
                 for t in study["trials"]]
        lines += _table(["method", "lr", *extras], rows)
    lines += ["", "## Per method", ""]
    for method in study["methods"]:
        mine = [t for t in study["trials"] if t["method"] == method]
        ok = [t for t in mine if t["status"] == "ok"]
        wins = [t for t in ok if (t.get("final") or {}).get("success")]
        last = [t for t in ok if t.get("curve")]
        worst = max((p.get("retain.ppl") or 0.0 for t in last for p in t["curve"]), default=None)
        text = f"- **{method}**: {len(wins)} of {len(mine)} learning rates reach the thresholds with held-out " \
               f"perplexity within 10%"
        if worst and orig.get("retain.ppl"):
            text += f"; the highest held-out perplexity along training is {worst / orig['retain.ppl']:.3g}x the original"
        failed = [t for t in mine if t["status"] != "ok"]
        if failed:
            text += "; failed: " + ", ".join(f"lr {t['lr']:.3g} ({t.get('error') or t['status']})" for t in failed)
        lines.append(text)
    lines += ["", "Dynamics: `plots/dynamics.png` (one panel per metric, one line per method and lr).", ""]
    return "\n".join(lines)


def plot_dynamics(study: Mapping, path: Path) -> Path:
    """One panel per metric, one line per method (colour) and lr (line style); the unseen-set
    thresholds and the 10% perplexity bound dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n = study["el_n"]
    trials = [t for t in study["trials"] if t.get("curve")]
    mia = next((t["mia_key"] for t in trials if t.get("mia_key")), None)
    panels = [(k, title) for k, title in curve_panels(n, mia)
              if any(p.get(k) is not None for t in trials for p in (t["curve"] if k != "loss" else t.get("losses", [])))]
    panels = panels or curve_panels(n, mia)[:1]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(study["methods"])}
    styles = ["-", "--", ":", "-."]
    lr_index = {lr: i for i, lr in enumerate(study["lrs"])}
    limits = study.get("thresholds") or {}
    ppl0 = study["original"].get("retain.ppl")
    for ax, (key, title) in zip(axes.flat, panels):
        for t in trials:
            series = t.get("losses", []) if key == "loss" else t["curve"]
            xs = [p["step"] for p in series if p.get(key) is not None]
            ys = [p[key] for p in series if p.get(key) is not None]
            if xs:
                ax.plot(xs, ys, color=colours[t["method"]], linestyle=styles[lr_index.get(t["lr"], 0) % len(styles)],
                        marker="o" if key != "loss" else None, markersize=3, linewidth=1.3,
                        label=f"{t['method']} lr {t['lr']:.3g}")
        if key in limits:
            ax.axhline(limits[key], color="grey", linestyle="--", linewidth=1, label="unseen set")
        if key == "retain.ppl" and ppl0:
            ax.axhline(ppl0 * PPL_TOLERANCE, color="grey", linestyle=":", linewidth=1, label="1.10 x original")
            values = [p[key] for t in trials for p in t["curve"] if p.get(key)]
            if values and max(values) > 10 * min(values):  # a diverging run: keep the others readable
                ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(f"Study {study['name']}: dynamics along training")
    fig.tight_layout(rect=(0, 0.04 + 0.025 * math.ceil(len(labels) / 6), 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Collecting the trials


def trial_record(row: Mapping, trial_dir: Path, original: Mapping, n: int) -> dict:
    """One trial of the study: its params, status, curve (the training result's history, one
    point per eval step, step 0 the original), per-step losses and its final evaluation."""
    import json

    params = row.get("params") or {}
    rec: dict[str, Any] = {"trial_id": row["trial_id"], "method": params.get("method.name"),
                           "lr": params.get("train.lr"), "retain_weight": params.get("method.retain_weight"),
                           "status": "ok" if row["status"] in ("ok", "infeasible") else row["status"],
                           "run_id": row.get("run_id"), "error": row.get("error")}
    result_file, metrics_file = trial_dir / "train_result.json", trial_dir / "metrics.json"
    if result_file.is_file():
        result = json.loads(result_file.read_text())
        rec["curve"] = [{k: v for k, v in p.items() if k == "step" or _num(v) is not None}
                        for p in result.get("history") or []]
        rec["losses"] = [{"step": p["step"], "loss": p.get("loss")} for p in result.get("curve") or []]
        rec.update(best_step=result.get("best_step"), steps=result.get("steps"), stopped=result.get("stopped"),
                   seconds=result.get("seconds"))
    if metrics_file.is_file() and rec["status"] == "ok":
        rec["after"] = json.loads(metrics_file.read_text())["after"]
        rec["mia_key"] = mia_key(rec["after"])
    return rec


def assemble(name: str, base: Mapping, methods: Sequence[str], lrs: Sequence[float], original: Mapping,
             records: list[dict], wall_seconds: float) -> dict:
    """study.json: the setup, the original's figures, the thresholds, every trial's curve and
    final figures (the extras read from whatever the final evaluations hold)."""
    n = el_n(base)
    extras = extra_keys([r["after"] for r in records if r.get("after")] + [original],
                        skip=[r.get("mia_key") for r in records] + ["mia_auc"])
    orig_flat = numeric(original)
    orig_mia = mia_key(original)
    orig = {f"forget.el{n}": orig_flat.get(f"forget.el{n}"), "forget.ma": orig_flat.get("forget.ma"),
            "mia_auc": orig_flat.get(orig_mia) if orig_mia else None, "mauve": orig_flat.get("mauve"),
            "retain.ppl": orig_flat.get("retain.ppl"), **{k: orig_flat.get(k) for k in extras}}
    for rec in records:
        if rec.get("after") is not None:
            rec["final"] = final_figures(rec.pop("after"), original, n, extras)
    order = {(m, float(lr)): i for i, (m, lr) in enumerate((m, lr) for m in methods for lr in lrs)}
    records.sort(key=lambda r: order.get((r["method"], float(r["lr"] or 0)), len(order)))
    return {"name": name, "methods": list(methods), "lrs": [float(v) for v in lrs], "el_n": n,
            "max_steps": get_path(base, "train.max_steps"), "eval_every": get_path(base, "train.eval_every"),
            "watch": get_path(base, "train.watch"), "select": get_path(base, "train.select"),
            "original": orig, "thresholds": thresholds(original, n), "extra_keys": extras,
            "trials": records, "wall_seconds": wall_seconds}


# --------------------------------------------------------------------------------------------
# The driver


def _grid(points: list[dict]) -> dict:
    """Tune's param_space for the points: a grid over method x lr, the retain weight derived."""
    from ray import tune

    methods = list(dict.fromkeys(p["method.name"] for p in points))
    lrs = list(dict.fromkeys(p["train.lr"] for p in points))
    weight = {p["method.name"]: p["method.retain_weight"] for p in points}
    return {"method.name": tune.grid_search(methods), "train.lr": tune.grid_search(lrs),
            "method.retain_weight": tune.sample_from(lambda config: weight[config["method.name"]])}


def check_study_inputs(space, methods: Sequence[str], log=print) -> str | None:
    """The sweep's checks of the base (and the demo), then trainables.preflight on each method's
    config (a method may read files of its own: RMU's layers, a reference model). Returns the
    demo folder (None without the demo)."""
    from orchestrator.sweep import check_inputs
    from orchestrator.trial import trial_config
    from trainables.preflight import preflight

    demo_dir = check_inputs(space, log)
    base_weight = float(get_path(space.base, "method.retain_weight") or 0.0)
    for method in methods:
        params = {"method.name": method, "method.retain_weight": retain_weight_for(method, base_weight)}
        try:
            preflight(trial_config(space, params, demo_dir)[1])
        except InputError as exc:
            raise InputError(f"--methods: {method}: {exc}") from None
    return demo_dir


def run_study(base: dict, methods: Sequence[str], lrs: Sequence[float], output: str | Path,
              overwrite: bool = False, max_concurrent: int = 1, log=print) -> dict:
    """Run the study; returns study.json's content. Every refusal comes before anything is written."""
    import os
    import shutil

    import ray
    from ray import tune

    from orchestrator.launcher import ensure_ray
    from orchestrator.results import collect_trials, reconcile_runs, tune_status
    from orchestrator.sweep import (SweepPaths, _reporter, _trial_dirname, _trial_name, _trial_resources,
                                    check_output, evaluate_original, start_tracking, undo_start)
    from orchestrator.tracking import KIND_TAG, RUN_NAME_TAG, Tracker, default_tracking_uri, ui_command
    from orchestrator.trial import SweepContext, run_trial
    from trainables.io import write_json, write_text

    t_start = time.time()
    if max_concurrent < 1:
        raise InputError(f"--max-concurrent: expected an integer >= 1, got {max_concurrent!r}")
    paths = SweepPaths(Path(output).resolve())
    points = study_points(base, methods, lrs)
    space = build_study_space(base, methods, lrs, study_name(paths.root), max_concurrent)
    check_output(paths.root, overwrite)
    demo_dir = check_study_inputs(space, methods, log)

    if paths.root.exists():
        shutil.rmtree(paths.root)  # --overwrite (check_output refused otherwise)
    paths.root.mkdir(parents=True)
    write_text(paths.space, space.dump())
    tracker = Tracker(default_tracking_uri(paths.root))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    state: dict = {}
    started_ray = not ray.is_initialized()
    try:
        try:
            start_tracking(space, paths, state, tracker, log)
            parent = state["parent_run_id"]
            tracker.set_tags(parent, {KIND_TAG: "study"})
            tracker.log_params(parent, {"study.methods": ",".join(methods),
                                        "study.lrs": ",".join(f"{v:g}" for v in lrs)})
            state.update(demo_dir=demo_dir, started=t_start, kind="study")
            write_json(paths.state, state)
            original = evaluate_original(space, demo_dir, paths, log)  # starts Ray (fit_distributed)
            tracker.log_metrics(parent, {f"original.{k}": v for k, v in numeric(original).items()})
            tracker.log_artifact(parent, paths.original, "original")
            ensure_ray(log)
            ctx = SweepContext(space=space, sweep_dir=str(paths.root), tracking_uri=tracker.uri,
                               experiment_id=state["experiment_id"], parent_run_id=parent,
                               demo_dir=demo_dir, original=original)
            trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=ctx),
                                            _trial_resources(space.budget))
            tuner = tune.Tuner(
                trainable, param_space=_grid(points),
                tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=max_concurrent,
                                            trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname,
                                            reuse_actors=True),
                run_config=tune.RunConfig(name=paths.tune.name, storage_path=str(paths.tune.parent),
                                          failure_config=tune.FailureConfig(max_failures=0),
                                          progress_reporter=_reporter(space), verbose=1))
        except BaseException:
            undo_start(paths, tracker, state, log)
            raise
        log(f"study {space.name}: {len(points)} trials ({', '.join(methods)} x lr "
            f"{', '.join(f'{v:.3g}' for v in lrs)}), {max_concurrent} at a time; MLflow {tracker.uri}")
        grid = tuner.fit()
        rows = collect_trials(space, paths.root, tune_status(grid))
        reconcile_runs(space, paths, tracker, state, rows, set())
        n = el_n(base)
        records = [trial_record(r, paths.trials / r["trial_id"], original, n) for r in rows]
        study = assemble(space.name, base, methods, lrs, original, records, time.time() - t_start)
        for rec in study["trials"]:
            if rec.get("run_id"):
                tracker.set_tags(rec["run_id"], {RUN_NAME_TAG: f"{rec['method']} lr={rec['lr']:.3g}",
                                                 "study.method": rec["method"], "study.lr": f"{rec['lr']:g}"})
        write_json(paths.root / "study.json", study)
        write_text(paths.root / "study.md", markdown_report(study))
        png = plot_dynamics(study, paths.root / "plots" / "dynamics.png")
        for f in (paths.root / "study.json", paths.root / "study.md"):
            tracker.log_artifact(parent, f)
        tracker.log_artifact(parent, png, "plots")
        ok = sum(t["status"] == "ok" for t in study["trials"])
        successes = sum(bool((t.get("final") or {}).get("success")) for t in study["trials"])
        tracker.log_metrics(parent, {"n_trials": len(study["trials"]), "n_completed": ok,
                                     "n_failed": len(study["trials"]) - ok, "n_success": successes})
        tracker.finish(parent, "FINISHED" if ok == len(points) else "KILLED")
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    log("\n" + markdown_report(study))
    log(f"artifacts: {paths.root}  (study.md, study.json, plots/dynamics.png, trials/)")
    log(f"MLflow:    experiment '{state['experiment']}', parent run {state['parent_run_id']}")
    log(f"           {ui_command(state['tracking_uri'])}")
    return study
