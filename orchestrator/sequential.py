"""Sequential unlearning requests: `data.forget` as a list of forget sets (or one file cut in N
with `--split-forget N`), applied one after the other, each request starting from the previous
one's result.

Each request is one job of the `undial unlearn` machinery (orchestrator.unlearn.run_job: one
process or Ray Train workers; a worker only ever sees one forget file). After request i its
model is evaluated on every forget set so far: set i by the training job's own final evaluation
(the whole suite: unseen set, held-out perplexity, MAUVE, ...), each earlier set by an
evaluation job measuring that forget set alone. The original model is evaluated once in full
(request 1's "before") and on each later forget set alone; the unseen-set thresholds and the
held-out perplexity every request is compared with are the original's, so a request's model
selection (`train.select: best`, held-out ppl within train.max_ppl_factor) is bounded by the
original model, not by the previous request, and drift cannot compound.

LoRA: a request's result is an adapter; the next request trains a fresh adapter on that adapter
merged into its base (request-<i>/merged/), so its teacher and its base are the previous result.

Output folder (written in a staging folder, moved into place when every request succeeded):

    config.yaml                    the run config, data.forget the list of request files
    requests/forget-<i>.jsonl      with --split-forget: the parts (rows as in the source file)
    request-<i>/config.yaml        request i's config (model: the previous request's model)
    request-<i>/metrics.json       before (the original), after, forget_sets (per set j <= i), training
    request-<i>/history.json       its training curve
    request-<i>/model/             its model (LoRA: the adapter) ; merged/ (LoRA, i < N): the next base
    sequential.json  sequential.md  sequential.png      every figure, the table, the plot
    mlflow.db  mlartifacts/        MLflow (default store): a parent run, a child run per request

MLflow is written once the folder is in place (its records point at the final paths).
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from orchestrator.study import PPL_TOLERANCE, el_n  # one rule for "within 10%" and the EL_n reported
from trainables.config import UnlearnConfig, dump_yaml, from_dict
from trainables.errors import InputError
from trainables.metric_names import METRICS, el_metric
from trainables.tree import map_leaves, numeric

SPLIT_DIR = "requests"
MA = METRICS["forget.ma"].name        # "forget.ma"
PPL = METRICS["retain.ppl"].name      # "retain.ppl"
MAUVE = METRICS["mauve"].name


def forget_sets(cfg: UnlearnConfig) -> list[str]:
    forget = cfg.data.forget
    return list(forget) if isinstance(forget, (list, tuple)) else [forget]


def is_sequential(cfg: UnlearnConfig, split: int | None = None) -> bool:
    """Whether `undial unlearn` runs sequential requests: several forget sets, or --split-forget."""
    return split is not None or len(forget_sets(cfg)) > 1


# --------------------------------------------------------------------------------------------
# --split-forget


def check_split(parts) -> None:
    """--split-forget N: an integer >= 2 (checked by the CLI before it builds anything)."""
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 2:
        raise InputError(f"--split-forget: expected an integer >= 2, got {parts!r}")


def split_forget(path: str, parts: int, out_dir: Path, data_cfg) -> list[Path]:
    """Cut one forget file into `parts` contiguous parts (sizes differing by at most one, the
    larger first), written as out_dir/forget-<i>.jsonl: JSON Lines rows kept as they are (text,
    spans, Q&A fields), a text file's lines as {text_field: line}. Blank lines are skipped, as
    the loader does."""
    from trainables.data import detect_format

    check_split(parts)
    fmt = detect_format(path, data_cfg.format)
    if fmt not in ("jsonl", "text") or (fmt == "text" and data_cfg.format != "auto"):
        raise InputError(f"--split-forget: cuts a JSON Lines or text forget file (data.format auto or jsonl); "
                         f"{path} is {fmt}")
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.rstrip("\r\n") for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"data.forget: {path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if fmt == "text":
        lines = [json.dumps({data_cfg.text_field: line}, ensure_ascii=False) for line in lines]
    if parts > len(lines):
        raise InputError(f"--split-forget: {parts} parts of {path}, which holds {len(lines)} records: "
                         f"expected at most {len(lines)}")
    size, extra = divmod(len(lines), parts)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        target = out_dir / f"forget-{i + 1}.jsonl"
        target.write_text("".join(line + "\n" for line in lines[start:end]), encoding="utf-8")
        files.append(target)
        start = end
    return files


# --------------------------------------------------------------------------------------------
# The per-job configs (pure)


def request_config(base: Mapping, forget: str, index: int, model: str | None = None) -> UnlearnConfig:
    """Request `index`'s config: the run config with data.forget = its one file, trained from
    `model` (None: the configured model), under its own Ray Train run name."""
    data = copy.deepcopy(dict(base))
    data["data"]["forget"] = forget
    if model is not None:
        data["model"]["name_or_path"] = model
        data["model"]["revision"] = None  # a local folder
    data["run"]["name"] = f"{base['run']['name']}-request-{index}"
    return from_dict(UnlearnConfig, data)


def forget_only_config(base: Mapping, forget: str, model: str, revision: str | None, name: str) -> UnlearnConfig:
    """An evaluation of `model` on one forget set alone (EL_n, MA, perplexity): no unseen set,
    held-out text, MAUVE, attacks or relearning, which the request's own evaluation measured."""
    data = copy.deepcopy(dict(base))
    data["model"].update(name_or_path=model, revision=revision)
    data["data"].update(forget=forget, unseen=None, heldout=None, prompts=None)
    data["eval"].update(mia=False, mia_attacks=None, retain_model=None)
    data["eval"]["mauve"]["enabled"] = False
    data["eval"]["relearn"]["enabled"] = False
    data["train"]["stop_when"] = "never"  # "threshold" needs data.unseen; nothing trains here anyway
    data["run"]["name"] = name
    return from_dict(UnlearnConfig, data)


# --------------------------------------------------------------------------------------------
# The figures (pure: reports in, sequential.json's content out)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def unseen_thresholds(original: Mapping, n: int) -> dict[str, float] | None:
    """The unseen set's EL_n and MA on the original model (None without an unseen set)."""
    unseen = original.get("unseen") or {}
    el, ma = _num(unseen.get(f"el{n}")), _num(unseen.get("ma"))
    return None if el is None or ma is None else {"el": el, "ma": ma}


def set_figures(forget_section: Mapping, limits: Mapping | None, n: int) -> dict:
    """One model on one forget set: EL_n, MA, perplexity, and whether EL_n and MA are at or
    below the unseen set's (None without thresholds)."""
    el, ma = _num(forget_section.get(f"el{n}")), _num(forget_section.get("ma"))
    below = None
    if limits is not None:
        below = el is not None and ma is not None and el <= limits["el"] and ma <= limits["ma"]
    return {"el": el, "ma": ma, "ppl": _num(forget_section.get("ppl")), "below_unseen": below}


def model_figures(report: Mapping, original: Mapping) -> dict:
    """Held-out perplexity (and its ratio to the original's) and MAUVE of one model's whole report."""
    ppl = _num((report.get("retain") or {}).get("ppl"))
    ppl0 = _num((original.get("retain") or {}).get("ppl"))
    ratio = ppl / ppl0 if ppl is not None and ppl0 else None
    return {"retain_ppl": ppl, "retain_ppl_ratio": ratio,
            "ppl_within_10pct": None if ratio is None else ratio <= PPL_TOLERANCE,
            "mauve": _num(report.get("mauve")), "mia_auc": _num(report.get("mia_auc"))}


def assemble(files: Sequence[str], original: Mapping, original_sets: Mapping[int, Mapping],
             requests: Sequence[Mapping], n: int, split: int | None = None) -> dict:
    """sequential.json. `original`: the original model's whole report (on forget set 1);
    `original_sets[j]`: its forget section on set j; each request: {"after": its whole report on
    its own set, "sets": {j: forget section of its model on set j <= i}, + what it records}."""
    limits = unseen_thresholds(original, n)
    out_requests = []
    for i, req in enumerate(requests, start=1):
        sets = {str(j): set_figures(section, limits, n) for j, section in sorted(req["sets"].items())}
        marks = [s["below_unseen"] for s in sets.values()]
        figures = model_figures(req["after"], original)
        out_requests.append({
            "index": i, "forget": files[i - 1], "base": req.get("base"), "model": req.get("model"),
            "sets": sets, **figures,
            # the whole evaluation on its own forget set (the retain model's per-record section left out)
            "figures": {k: v for k, v in numeric(req["after"]).items() if not k.startswith("retain_model.")},
            "all_below_unseen": None if limits is None else all(marks),
            "success": None if limits is None or figures["ppl_within_10pct"] is None
            else all(marks) and figures["ppl_within_10pct"],
            "training": req.get("training"), "seconds": req.get("seconds")})
    return {"el_n": n, "forget_sets": list(files), "split": split, "thresholds": limits,
            "ppl_tolerance": PPL_TOLERANCE,
            "original": {"sets": {str(j): set_figures(s, limits, n) for j, s in sorted(original_sets.items())},
                         **model_figures(original, original)},
            "requests": out_requests}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.{digits}f}"


def _cell(figs: Mapping | None) -> str:
    if not figs:
        return ""
    mark = {True: " ok", False: " above", None: ""}[figs.get("below_unseen")]
    return f"{_fmt(figs.get('el'))} / {_fmt(figs.get('ma'))}{mark}"


def markdown_table(seq: Mapping) -> str:
    """sequential.md: rows = the original and each request, columns = forget EL_n / MA per forget
    set (ok: both at or below the unseen set's), held-out perplexity and its ratio, MAUVE."""
    n, limits = seq["el_n"], seq.get("thresholds")
    k = len(seq["forget_sets"])
    lines = [f"# Sequential unlearning: {len(seq['requests'])} requests", ""]
    for j, path in enumerate(seq["forget_sets"], start=1):
        lines.append(f"- forget set {j}: `{path}`")
    lines.append("")
    if limits:
        lines.append(f"Thresholds (the original model on the unseen set): EL{n} <= {limits['el']:.3f}, "
                     f"MA <= {limits['ma']:.3f}. `ok`: both at or below; `above`: not. Held-out perplexity "
                     f"ratio: over the original's (target <= {seq['ppl_tolerance']:.2f}).")
    else:
        lines.append("No unseen set (data.unseen): no thresholds.")
    lines.append("")
    header = ["model", *[f"set {j} EL{n} / MA" for j in range(1, k + 1)], "held-out ppl", "ppl ratio", "MAUVE",
              "success"]
    rows = [["original", *[_cell(seq["original"]["sets"].get(str(j))) for j in range(1, k + 1)],
             _fmt(seq["original"]["retain_ppl"], 2), _fmt(1.0 if seq["original"]["retain_ppl"] else None, 3),
             _fmt(seq["original"]["mauve"]), ""]]
    for r in seq["requests"]:
        rows.append([f"request {r['index']}", *[_cell(r["sets"].get(str(j))) for j in range(1, k + 1)],
                     _fmt(r["retain_ppl"], 2), _fmt(r["retain_ppl_ratio"]), _fmt(r["mauve"]), _fmt(r["success"])])
    lines += ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "`success`: every forget set so far at or below the thresholds, held-out perplexity within "
              f"{(seq['ppl_tolerance'] - 1) * 100:.0f}% of the original's. Plot: `sequential.png`.", ""]
    return "\n".join(lines)


def plot(seq: Mapping, path: Path) -> Path:
    """Four panels across requests (0 = the original): forget EL_n per set, forget MA per set
    (the unseen thresholds dashed), held-out perplexity ratio (1.10 dotted), MAUVE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n, limits = seq["el_n"], seq.get("thresholds") or {}
    k = len(seq["forget_sets"])
    rows = [(0, seq["original"])] + [(r["index"], r) for r in seq["requests"]]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for ax, key, title in ((axes[0], "el", f"forget EL{n}"), (axes[1], "ma", "forget MA")):
        for j in range(1, k + 1):
            pts = [(x, row["sets"][str(j)][key]) for x, row in rows
                   if str(j) in row["sets"] and row["sets"][str(j)][key] is not None]
            colour = plt.get_cmap("tab10")((j - 1) % 10)
            # the original's point alone: set j is not evaluated between the original and request j
            for x, y in pts[:1]:
                ax.plot([x], [y], marker="o", markerfacecolor="none", color=colour)
            if len(pts) > 1:
                ax.plot(*zip(*pts[1:]), marker="o", color=colour, label=f"set {j}")
        if key in limits:
            ax.axhline(limits[key], color="grey", linestyle="--", linewidth=1, label="unseen set")
        ax.set_title(title)
    for ax, key, title in ((axes[2], "retain_ppl_ratio", "held-out ppl / original"), (axes[3], "mauve", "MAUVE")):
        value0 = 1.0 if key == "retain_ppl_ratio" and seq["original"]["retain_ppl"] else seq["original"].get(key)
        pts = [(x, value0 if x == 0 else row.get(key)) for x, row in rows]
        pts = [(x, v) for x, v in pts if v is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", color="black")
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        if key == "retain_ppl_ratio":
            ax.axhline(seq["ppl_tolerance"], color="grey", linestyle=":", linewidth=1,
                       label=f"{seq['ppl_tolerance']:.2f} x original")
        ax.set_title(title)
    for ax in axes:
        ax.set_xlabel("request (0 = original)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"Sequential unlearning: {len(seq['requests'])} requests")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def request_metrics(req: Mapping, n: int) -> dict[str, float]:
    """A request's figures as MLflow metrics: set<j>.forget.el<n> / .forget.ma / .forget.ppl per
    forget set so far, retain.ppl, retain_ppl_ratio, mauve."""
    el_name = el_metric("forget", n).name
    out: dict[str, float] = {}
    for j, figs in req["sets"].items():
        for key, name in (("el", el_name), ("ma", MA), ("ppl", "forget.ppl")):
            if figs.get(key) is not None:
                out[f"set{j}.{name}"] = figs[key]
    for key, name in (("retain_ppl", PPL), ("retain_ppl_ratio", "retain_ppl_ratio"), ("mauve", MAUVE),
                      ("mia_auc", "mia_auc")):
        if req.get(key) is not None:
            out[name] = req[key]
    return out


# --------------------------------------------------------------------------------------------
# The driver


def _relocator(stage: Path, final: Path):
    """Stage paths -> where they will be once the folder is in place (for what is written)."""
    prefix = str(stage)

    def move(value):
        if isinstance(value, str) and (value == prefix or value.startswith(prefix + "/")):
            return str(final) + value[len(prefix):]
        return value

    return lambda tree: map_leaves(tree, move)


def merge_adapter(cfg: UnlearnConfig, adapter_dir: Path, out_dir: Path) -> Path:
    """A LoRA request's adapter merged into its base, saved as a full model folder (safetensors +
    tokenizer): the next request's base. In this process for a local run; on a Ray task on this
    node otherwise (the driver of a distributed run loads no model)."""
    from orchestrator.unlearn import runs_locally

    args = (str(adapter_dir), str(out_dir), cfg.model.dtype, cfg.model.trust_remote_code, cfg.model.revision,
            cfg.model.allow_pickle_weights)
    if runs_locally(cfg):
        _merge(*args)
        return out_dir
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)  # the stage's disk
    ray.get(ray.remote(num_cpus=1)(_merge).options(scheduling_strategy=here).remote(*args))
    return out_dir


def _merge(adapter_dir: str, out_dir: str, dtype: str, trust_remote_code: bool, revision: str | None,
           allow_pickle_weights: bool) -> None:
    from trainables.evaluate import load_result_model
    from trainables.models import load_tokenizer

    model = load_result_model(adapter_dir, dtype, trust_remote_code=trust_remote_code, revision=revision,
                              allow_pickle_weights=allow_pickle_weights, key="model.name_or_path")
    model.save_pretrained(out_dir, safe_serialization=True)
    load_tokenizer(adapter_dir, trust_remote_code).save_pretrained(out_dir)  # save_model put it beside the adapter


def _relocate_adapters(stage: Path, final: Path) -> None:
    """An adapter records its base (base_model_name_or_path, and its model card): from request 2
    on that is the previous request's merged model, named by its stage path until now."""
    for folder in sorted(stage.glob("request-*/model")):
        for name in ("adapter_config.json", "README.md"):
            f = folder / name
            if f.is_file():
                text = f.read_text(encoding="utf-8")
                if str(stage) in text:
                    f.write_text(text.replace(str(stage), str(final)), encoding="utf-8")


def run_sequential(cfg: UnlearnConfig, output: str | Path, overwrite: bool = False, log=print,
                   split: int | None = None) -> dict:
    """Run the requests; returns sequential.json's content. Every refusal comes before anything
    is written; a failed request leaves nothing behind."""
    from orchestrator.unlearn import run_job, staged_output, training_summary
    from trainables.io import write_json, write_text
    from trainables.preflight import preflight

    files = forget_sets(cfg)
    if split is not None:
        check_split(split)
        if len(files) > 1:
            raise InputError(f"--split-forget: cuts one forget file; data.forget is a list of {len(files)}")
    elif len(files) < 2:
        raise InputError("data.forget: sequential requests need a list of 2 or more forget sets "
                         "(or --split-forget N)")
    if cfg.run.resume_from:
        raise InputError("run.resume_from: resumes one job; not with sequential requests")
    base = cfg.to_dict()
    n = el_n(base)
    for i, forget in enumerate(files, start=1):
        preflight(request_config(base, forget, i))  # every forget set (or the file to cut), before any output
    final = Path(output).resolve()
    lora = cfg.lora.enabled
    t_start = time.time()
    with staged_output(output, overwrite) as stage:
        stage = stage.resolve()
        relocate = _relocator(stage, final)
        if split is not None:
            files = [str(p) for p in split_forget(files[0], split, stage / SPLIT_DIR, cfg.data)]
            for i, forget in enumerate(files, start=1):
                preflight(request_config(base, forget, i))
        write_text(stage / "config.yaml", dump_yaml(relocate({**base, "data": {**base["data"], "forget": files}})))

        def evaluate(forget: str, model: str, revision: str | None, name: str) -> dict:
            ecfg = forget_only_config(base, forget, model, revision, f"{cfg.run.name}-{name}")
            preflight(ecfg, train=False)
            return run_job(ecfg, None, stage, {"train": False}, log)["evaluation"]["original"]

        original: dict = {}
        original_sets: dict[int, dict] = {}
        requests: list[dict] = []
        model = cfg.model.name_or_path  # what request i trains from
        for i, forget in enumerate(files, start=1):
            t_req = time.time()
            folder = stage / f"request-{i}"
            rcfg = request_config(base, forget, i, model if i > 1 else None)
            preflight(rcfg)
            folder.mkdir()
            write_text(folder / "config.yaml", dump_yaml(relocate(rcfg.to_dict())))
            if i == 1:
                job: dict = {"evaluate_original": True, "evaluate_final": True}
            else:
                log(f"request {i}/{len(files)}: evaluating the original model on forget set {i} ...")
                original_sets[i] = evaluate(forget, cfg.model.name_or_path, cfg.model.revision,
                                            f"original-forget-{i}")["forget"]
                # The original's figures with this request's forget set: its step 0 and the held-out
                # perplexity bound of model selection are the original's (the retain model's
                # per-record section belongs to set 1: measured again for this set).
                before = {k: v for k, v in original.items() if k != "retain_model"}
                job = {"evaluate_final": True, "original": {**before, "forget": original_sets[i]}}
            log(f"request {i}/{len(files)}: unlearning {relocate(forget)} from {relocate(model)} ...")
            result = run_job(rcfg, folder / "model", stage, job, log)
            if i == 1:
                original = result["evaluation"]["original"]
                original_sets[1] = original["forget"]
            after = result["evaluation"]["unlearned"]
            sets = {i: after["forget"]}
            revision = cfg.model.revision if lora and i == 1 else None  # an adapter on the original names it
            for j in range(1, i):
                log(f"request {i}/{len(files)}: evaluating its model on forget set {j} ...")
                sets[j] = evaluate(files[j - 1], str(folder / "model"), revision, f"request-{i}-forget-{j}")["forget"]
            write_json(folder / "metrics.json", relocate({
                "before": job.get("original") or original, "after": after,
                "forget_sets": {str(j): s for j, s in sorted(sets.items())}, "training": training_summary(result)}))
            write_json(folder / "history.json", result.get("history", []))
            requests.append({"after": after, "sets": sets, "base": relocate(model),
                             "model": relocate(str(folder / "model")), "training": training_summary(result),
                             "seconds": time.time() - t_req})
            if i < len(files):
                model = str(merge_adapter(rcfg, folder / "model", folder / "merged")) if lora else str(folder / "model")
        _relocate_adapters(stage, final)
        seq = assemble([relocate(f) for f in files], original, original_sets, requests, n, split)
        seq["wall_seconds"] = time.time() - t_start
        write_json(stage / "sequential.json", seq)
        write_text(stage / "sequential.md", markdown_table(seq))
        plot(seq, stage / "sequential.png")
    seq["tracking"] = log_to_mlflow(seq, final, cfg, log)
    log("\n" + markdown_table(seq))
    log(f"wrote {final / 'sequential.md'}, sequential.json, sequential.png and request-1 .. "
        f"request-{len(files)}/ (config, metrics, model)")
    t = seq["tracking"]
    log(f"MLflow: experiment '{t['experiment']}', parent run {t['parent_run_id']}; {t['ui']}")
    return seq


# --------------------------------------------------------------------------------------------
# MLflow


def experiment_name(output: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", output.name).strip("-.")
    return name if name and name[0].isalnum() else "sequential"


def log_to_mlflow(seq: Mapping, final: Path, cfg: UnlearnConfig, log=print) -> dict:
    """One parent run (the setup, the figures of every request at step = its index, the table,
    plot and JSON as artifacts) and one child run per request (its index and forget file, its
    figures, its config and metrics). The store: $MLFLOW_TRACKING_URI, else sqlite:///OUTPUT/mlflow.db."""
    import os

    from orchestrator.tracking import (KIND_TAG, MODEL_TAG, PARENT_TAG, Tracker, default_tracking_uri, git_state,
                                       project_version, ui_command)

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tracker = Tracker(default_tracking_uri(final))
    name = experiment_name(final)
    location = (final / "mlartifacts").as_uri() if tracker.uri.startswith("sqlite:") else None
    experiment_id = tracker.experiment(name, location)
    parent = tracker.create_run(experiment_id, name, {KIND_TAG: "sequential", "undial.output": str(final),
                                                      "undial.version": project_version(), **git_state()})
    n = seq["el_n"]
    try:
        tracker.log_params(parent, {"requests": len(seq["requests"]), "split": seq["split"] or "none",
                                    "forget_sets": ", ".join(seq["forget_sets"]), "method.name": cfg.method.name,
                                    "train.lr": cfg.train.lr, "train.max_steps": cfg.train.max_steps,
                                    "lora.enabled": cfg.lora.enabled, "model": cfg.model.name_or_path})
        original = {**seq["original"], "index": 0}
        tracker.log_metrics(parent, request_metrics(original, n), step=0)
        if seq.get("thresholds"):
            tracker.log_metrics(parent, {f"unseen.el{n}": seq["thresholds"]["el"],
                                         "unseen.ma": seq["thresholds"]["ma"]})
        children = []
        for req in seq["requests"]:
            i = req["index"]
            figures = request_metrics(req, n)
            tracker.log_metrics(parent, figures, step=i)
            child = tracker.create_run(experiment_id, f"request {i}", {
                PARENT_TAG: parent, KIND_TAG: "request", MODEL_TAG: req["model"] or ""})
            tracker.log_params(child, {"request": i, "forget": req["forget"], "base_model": req["base"]})
            tracker.log_metrics(child, {**figures, **({"success": float(req["success"])}
                                                      if req["success"] is not None else {})}, step=i)
            for f in ("config.yaml", "metrics.json"):
                tracker.log_artifact(child, final / f"request-{i}" / f)
            tracker.finish(child)
            children.append(child)
        for f in ("sequential.md", "sequential.png", "sequential.json", "config.yaml"):
            tracker.log_artifact(parent, final / f)
        tracker.finish(parent)
    except BaseException as exc:
        tracker.fail(parent, f"{type(exc).__name__}: {exc}")
        raise
    return {"uri": tracker.uri, "experiment": name, "experiment_id": experiment_id, "parent_run_id": parent,
            "child_run_ids": children, "ui": ui_command(tracker.uri)}
