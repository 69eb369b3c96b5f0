"""Multi-objective sweeps: a search space over run configs, Ray Tune + Optuna, MLflow.

A search space (YAML, `search_spaces/*.yaml`) is a base run config plus:

    parameters:        # dotted config keys -> distributions
      method.gamma:   {distribution: loguniform, low: 1, high: 50}
      train.lr:       {distribution: loguniform, low: 1.0e-5, high: 1.0e-3}
      method.subset.policy: {distribution: choice, values: [all, reference, spans]}
      lora.rank:      {distribution: choice, values: [0, 4, 8]}   # 0 (or off) = full fine-tuning
      method.subset.tau: {distribution: uniform, low: 0.5, high: 2, when: {method.subset.policy: reference}}
    objectives: [{name: el3, mode: min}, {name: mauve, mode: max}]
    constraints: ["retain_ppl_ratio <= 1.1"]
    budget: {num_samples: 10, max_concurrent_trials: 2, sampler: tpe, seed: 0}

Each trial is a Tune *function trainable* that builds the trial's config, fits a Ray Train
TorchTrainer (Train's reports reach Tune through TuneReportCallback and MLflow through
StepLogger), evaluates the saved model with the evaluation suite and reports the objectives.
OptunaSearch (TPE or NSGA-II, seeded, RDB storage beside the MLflow store) proposes the
trials inside a ConcurrencyLimiter; constraints go through Optuna's constraints function.

Sweep folder layout (DIR):

    space.yaml  sweep.json  summary.json  trials.csv  mlflow.db  mlartifacts/  optuna.db
    original/metrics.json           the original model's evaluation (the "before")
    trials/<trial id>/              config.yaml, model/, train_result.json, metrics.json,
                                    result.json (objectives), status.json, attempts.log
    pareto/pareto_front.{csv,json,png,html}
    ray/tune/                       Tune's experiment (Tuner.restore on --resume)
    train/<trial id>/               Ray Train run storage (checkpoints; removed when done)
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
import os
import re
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from trainables.config import (UnlearnConfig, apply_overrides, dump_yaml, from_dict, read_yaml,
                                 resolve_demo_paths, to_plain)
from orchestrator.pareto import Objective, format_front, front_table, hypervolume, reference_point, write_front
from trainables.errors import InputError

CONFIG_SECTIONS = tuple(f.name for f in dataclasses.fields(UnlearnConfig))
SPACE_KEYS = ("name", "description", "base_config", "base", "parameters", "initial_points", "objectives",
              "constraints", "budget", "tracking")
DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
PARAM_KEYS = ("distribution", "low", "high", "values", "step", "log", "when", "description")
DEFAULT_OBJECTIVES = [{"name": "el3", "mode": "min"}, {"name": "mauve", "mode": "max"}]
OFF_VALUES = ("off", "none", "full")

# Objective / constraint names -> a path in the evaluation report (trainables.evaluate).
METRIC_ALIASES = {
    "ma": "forget.ma", "ma_private": "forget.ma_private", "forget_ma": "forget.ma", "forget_ppl": "forget.ppl",
    "unseen_ma": "unseen.ma", "retain_ppl": "retain.ppl", "ppl": "retain.ppl", "heldout_ppl": "retain.ppl",
    "mauve": "mauve", "rep2": "rep2", "rep3": "rep3", "rep4": "rep4", "mia_auc": "mia_auc",
    "mia_auc_min_k": "mia_auc_min_k",
}
REPORT_ROOTS = ("forget", "unseen", "retain", "mauve", "mauve_samples", "rep2", "rep3", "rep4", "mia_auc",
                "mia_auc_min_k", "ppl")
SECTION_METRICS = ("ma", "ma_private", "ppl")


# --------------------------------------------------------------------------------------------
# Dotted paths in plain dicts


def get_path(tree: Mapping, key: str, default: Any = None) -> Any:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def set_path(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def deep_merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _config_leaves() -> set[str]:
    """Every settable dotted key of UnlearnConfig (dict-valued fields count as leaves)."""
    out: set[str] = set()

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict) and value:
                walk(value, name)
            out.add(name)

    walk(UnlearnConfig().to_dict(), "")
    return out


def _is_off(value: Any) -> bool:
    if value is None or value is False:
        return True
    if isinstance(value, str):
        return value.strip().lower() in OFF_VALUES
    return isinstance(value, (int, float)) and value == 0


def apply_params(base: Mapping, params: Mapping[str, Any]) -> dict:
    """The run config (plain dict) of one trial: base + sampled params.

    `lora.rank` is conditional: 0 / off means full fine-tuning (lora.enabled false), a rank
    r > 0 means LoRA with rank r (unless lora.enabled is a parameter itself)."""
    data = copy.deepcopy(dict(base))
    for key, value in params.items():
        if key == "lora.rank":
            if _is_off(value):
                set_path(data, "lora.enabled", False)
                continue
            if "lora.enabled" not in params:
                set_path(data, "lora.enabled", True)
        set_path(data, key, value)
    return data


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or (isinstance(a, str) and isinstance(b, bool) and a.lower() == str(b).lower())
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


# --------------------------------------------------------------------------------------------
# The search space model


@dataclass
class Param:
    key: str
    distribution: str
    low: float | None = None
    high: float | None = None
    values: list | None = None
    step: float | None = None
    log: bool = False
    when: dict[str, list] = field(default_factory=dict)
    description: str = ""

    def active(self, effective: Mapping) -> bool:
        """Whether the parameter is sampled, given the trial's config so far."""
        for key, allowed in self.when.items():
            value = get_path(effective, key)
            if not any(_same(value, a) for a in allowed):
                return False
        return True

    def suggest(self, trial) -> Any:
        if self.distribution == "loguniform":
            return trial.suggest_float(self.key, self.low, self.high, log=True)
        if self.distribution == "uniform":
            return trial.suggest_float(self.key, self.low, self.high, step=self.step)
        if self.distribution == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1),
                                     log=self.log)
        return trial.suggest_categorical(self.key, list(self.values))

    def contains(self, value: Any) -> bool:
        if self.distribution == "choice":
            return any(_same(value, v) for v in self.values)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.distribution == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high

    def probes(self) -> list:
        return list(self.values) if self.distribution == "choice" else [self.low, self.high]

    def describe(self) -> str:
        if self.distribution == "choice":
            text = f"choice{list(self.values)}"
        else:
            text = f"{self.distribution}[{self.low:g}, {self.high:g}]"
        if self.when:
            text += " when " + ", ".join(f"{k} in {v}" for k, v in self.when.items())
        return text

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"distribution": self.distribution}
        if self.distribution == "choice":
            out["values"] = list(self.values)
        else:
            out.update(low=self.low, high=self.high)
            if self.step is not None:
                out["step"] = self.step
            if self.log:
                out["log"] = True
        if self.when:
            out["when"] = {k: list(v) for k, v in self.when.items()}
        if self.description:
            out["description"] = self.description
        return out


@dataclass
class ObjectiveSpec:
    name: str
    mode: str
    metric: str  # a path in the evaluation report, optionally with a _ratio suffix (after / before)
    reference: float | None = None  # hypervolume reference (worst value); default: known bound or data

    def as_objective(self) -> Objective:
        return Objective(self.name, self.mode)


@dataclass
class ConstraintSpec:
    metric: str
    op: str      # "<=" or ">="
    bound: float

    @property
    def text(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 is feasible. A missing / NaN value is infeasible."""
        if value is None or not math.isfinite(value):
            return math.inf
        return value - self.bound if self.op == "<=" else self.bound - value


@dataclass
class Budget:
    num_samples: int = 8
    max_concurrent_trials: int = 1
    workers_per_trial: int | None = None        # None: the base config's scaling.num_workers
    resources_per_worker: dict[str, float] | None = None  # None: the base config's (Ray: 1 CPU)
    trial_resources: dict[str, float] = field(default_factory=lambda: {"CPU": 0.0})
    eval_threads: int = 1                        # torch threads of the trial's evaluation
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    max_failures: int = 1                        # Tune retries per trial (-1: forever)
    time_budget_s: float | None = None

    def validate(self, path: str) -> None:
        _check(self.num_samples >= 1, f"{path}.num_samples", "expected an integer >= 1", self.num_samples)
        _check(self.max_concurrent_trials >= 1, f"{path}.max_concurrent_trials", "expected an integer >= 1",
               self.max_concurrent_trials)
        _check(self.workers_per_trial is None or self.workers_per_trial >= 1, f"{path}.workers_per_trial",
               "expected an integer >= 1", self.workers_per_trial)
        for key, value in (self.resources_per_worker or {}).items():
            _check(value >= 0, f"{path}.resources_per_worker.{key}", "expected a number >= 0", value)
        for key, value in self.trial_resources.items():
            _check(value >= 0, f"{path}.trial_resources.{key}", "expected a number >= 0", value)
        _check(self.eval_threads >= 1, f"{path}.eval_threads", "expected an integer >= 1", self.eval_threads)
        _check(self.max_failures >= -1, f"{path}.max_failures", "expected an integer >= -1", self.max_failures)
        _check(self.time_budget_s is None or self.time_budget_s > 0, f"{path}.time_budget_s",
               "expected a number > 0", self.time_budget_s)
        allowed = _sampler_options(self.sampler)
        for key in self.sampler_options:
            if key not in allowed:
                raise InputError(f"{path}.sampler_options.{key}: unknown option for sampler '{self.sampler}' "
                                 f"(known: {', '.join(sorted(allowed)) or 'none'})")


@dataclass
class TrackingConfig:
    uri: str | None = None          # default: $MLFLOW_TRACKING_URI, else sqlite:///DIR/mlflow.db
    experiment: str | None = None   # default: the space's name
    log_models: Literal["pareto", "all", "none"] = "pareto"


@dataclass
class SearchSpace:
    name: str
    base: dict
    parameters: list[Param]
    objectives: list[ObjectiveSpec]
    constraints: list[ConstraintSpec] = field(default_factory=list)
    budget: Budget = field(default_factory=Budget)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    initial_points: list[dict] = field(default_factory=list)
    description: str = ""

    @property
    def objective_list(self) -> list[Objective]:
        return [o.as_objective() for o in self.objectives]

    def param(self, key: str) -> Param | None:
        return next((p for p in self.parameters if p.key == key), None)

    def to_dict(self) -> dict:
        """The canonical form (base inlined): what DIR/space.yaml holds and --resume compares."""
        return {
            "name": self.name,
            "description": self.description,
            "base": copy.deepcopy(self.base),
            "parameters": {p.key: p.to_dict() for p in self.parameters},
            "initial_points": copy.deepcopy(self.initial_points),
            "objectives": [{"name": o.name, "mode": o.mode, "metric": o.metric,
                            **({"reference": o.reference} if o.reference is not None else {})}
                           for o in self.objectives],
            "constraints": [c.text for c in self.constraints],
            "budget": to_plain(self.budget),
            "tracking": to_plain(self.tracking),
        }

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _check(ok: bool, key: str, expectation: str, value: Any) -> None:
    if not ok:
        raise InputError(f"{key}: {expectation}, got {value!r}")


def _sampler_options(name: str) -> set[str]:
    import optuna

    cls = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
           "random": optuna.samplers.RandomSampler}[name]
    params = inspect.signature(cls.__init__).parameters
    return {k for k in params if k not in ("self", "seed", "constraints_func")}


# --------------------------------------------------------------------------------------------
# Loading and validation


def load_space(path: str | Path, overrides: Sequence[str] = ()) -> SearchSpace:
    """A search space YAML + `key=value` overrides -> a validated SearchSpace."""
    raw = read_yaml(path)
    return space_from_dict(raw, overrides, base_dir=Path(path).resolve().parent)


def _route_override(item: str, raw: Mapping) -> str:
    """`train.max_steps=5` -> `base.train.max_steps=5`; other keys address the space itself."""
    key = item.partition("=")[0]
    head = key.split(".", 1)[0]
    if head in CONFIG_SECTIONS and head not in SPACE_KEYS:
        return "base." + item
    return item


def _apply_space_overrides(raw: dict, overrides: Sequence[str]) -> None:
    params = raw.get("parameters") if isinstance(raw.get("parameters"), dict) else None
    for item in overrides:
        item = _route_override(item, raw)
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"override {item!r}: expected key.sub=value")
        if key.startswith("parameters.") and params is not None:
            rest = key[len("parameters."):]
            match = max((k for k in params if rest == k or rest.startswith(k + ".")), key=len, default=None)
            if match is not None:
                sub = rest[len(match) + 1:]
                parsed = yaml.safe_load(value) if value != "" else None
                if not sub:
                    params[match] = parsed
                else:
                    spec = params[match] if isinstance(params[match], dict) else {}
                    params[match] = spec
                    apply_overrides(spec, [f"{sub}={value}"])
                continue
            if "." in rest and rest not in params:
                # a new parameter: parameters.<dotted key>=<spec as YAML>
                params[rest] = yaml.safe_load(value) if value != "" else None
                continue
        apply_overrides(raw, [f"{key}={value}"])


def space_from_dict(raw: Mapping, overrides: Sequence[str] = (), base_dir: str | Path | None = None) -> SearchSpace:
    raw = copy.deepcopy(dict(raw))
    for key in raw:
        if key not in SPACE_KEYS:
            raise InputError(f"{key}: unknown key (known: {', '.join(SPACE_KEYS)})")
    base: dict = {}
    if raw.get("base_config") is not None:
        ref = raw["base_config"]
        if not isinstance(ref, str):
            raise InputError(f"base_config: expected a path to a run config, got {ref!r}")
        candidates = [Path(ref)] if Path(ref).is_absolute() else \
            [Path(base_dir or ".") / ref, Path.cwd() / ref]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise InputError(f"base_config: {ref} not found (relative paths are read beside the space file)")
        base = read_yaml(found)
    over = raw.get("base") or {}
    if not isinstance(over, dict):
        raise InputError(f"base: expected a mapping (a run config), got {over!r}")
    raw["base"] = deep_merge(base, over)
    raw.pop("base_config", None)
    raw.setdefault("parameters", {})
    _apply_space_overrides(raw, overrides)
    for key in raw:
        if key not in SPACE_KEYS:
            raise InputError(f"{key}: unknown key (known: {', '.join(SPACE_KEYS)})")

    name = raw.get("name") or "sweep"
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise InputError(f"name: expected letters, digits, '.', '_' or '-', got {name!r}")
    description = raw.get("description") or ""

    budget = from_dict(Budget, raw.get("budget") or {}, "budget")
    tracking = from_dict(TrackingConfig, raw.get("tracking") or {}, "tracking")

    base = raw["base"]
    if budget.workers_per_trial is not None:
        set_path(base, "scaling.num_workers", budget.workers_per_trial)
        if budget.workers_per_trial > 1 and get_path(base, "scaling.strategy", "none") == "none":
            set_path(base, "scaling.strategy", "ddp")
    if budget.resources_per_worker is not None:
        set_path(base, "scaling.resources_per_worker", dict(budget.resources_per_worker))
    try:
        base_cfg = from_dict(UnlearnConfig, base)
    except InputError as exc:
        raise InputError(f"base.{exc}") from None
    base = base_cfg.to_dict()

    parameters = _parse_parameters(raw.get("parameters"), base)
    objectives = _parse_objectives(raw.get("objectives"), base, parameters)
    constraints = _parse_constraints(raw.get("constraints"), base, parameters)
    names = {o.name for o in objectives}
    initial = _parse_initial_points(raw.get("initial_points"), parameters, base)
    space = SearchSpace(name=name, base=base, parameters=parameters, objectives=objectives,
                        constraints=constraints, budget=budget, tracking=tracking, initial_points=initial,
                        description=str(description))
    assert names
    return space


def _number(value: Any, key: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InputError(f"{key}: expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{key}: expected a number, got {value!r}")
    return value


def _parse_parameters(raw: Any, base: dict) -> list[Param]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"parameters: expected a mapping of dotted config keys to distributions, got {raw!r}")
    if not raw:
        raise InputError("parameters: at least one parameter is needed")
    leaves = _config_leaves()
    params: list[Param] = []
    for key, spec in raw.items():
        path = f"parameters.{key}"
        if not isinstance(key, str) or key not in leaves:
            section = str(key).split(".")[0]
            known = sorted(k[len(section) + 1:] for k in leaves if k.startswith(section + ".")) \
                if section in CONFIG_SECTIONS else sorted(CONFIG_SECTIONS)
            raise InputError(f"{path}: not a config key (known under {section if section in CONFIG_SECTIONS else 'the top'}: "
                             f"{', '.join(known)})")
        if isinstance(spec, list):
            spec = {"distribution": "choice", "values": spec}
        if not isinstance(spec, dict):
            raise InputError(f"{path}: expected a mapping like {{distribution: loguniform, low: 1, high: 50}}, "
                             f"got {spec!r}")
        for sub in spec:
            if sub not in PARAM_KEYS:
                raise InputError(f"{path}.{sub}: unknown key (known: {', '.join(PARAM_KEYS)})")
        dist = spec.get("distribution")
        if dist is None:
            dist = "choice" if "values" in spec else None
        if dist not in DISTRIBUTIONS:
            raise InputError(f"{path}.distribution: expected one of {', '.join(DISTRIBUTIONS)}, got {dist!r}")
        param = Param(key=key, distribution=dist, description=str(spec.get("description") or ""))
        if dist == "choice":
            for sub in ("low", "high", "step", "log"):
                if sub in spec:
                    raise InputError(f"{path}.{sub}: not used by distribution choice (give values)")
            values = spec.get("values")
            if not isinstance(values, list) or not values:
                raise InputError(f"{path}.values: expected a non-empty list, got {values!r}")
            for i, v in enumerate(values):
                if not (v is None or isinstance(v, (bool, int, float, str))):
                    raise InputError(f"{path}.values[{i}]: expected a number, string, true/false or null, got {v!r}")
            if len({repr(v) for v in values}) != len(values):
                raise InputError(f"{path}.values: repeated value in {values!r}")
            param.values = list(values)
        else:
            if "values" in spec:
                raise InputError(f"{path}.values: only for distribution choice")
            for sub in ("low", "high"):
                if sub not in spec:
                    raise InputError(f"{path}.{sub}: missing (distribution {dist} needs low and high)")
            low, high = _number(spec["low"], f"{path}.low"), _number(spec["high"], f"{path}.high")
            if dist == "loguniform" and not low > 0:
                raise InputError(f"{path}.low: must be > 0 for loguniform, got {spec['low']!r}")
            if dist == "int":
                for sub, v in (("low", low), ("high", high)):
                    if not float(v).is_integer():
                        raise InputError(f"{path}.{sub}: expected an integer for distribution int, got {v!r}")
                low, high = int(low), int(high)
            if not high > low:
                raise InputError(f"{path}.high: must be > low ({low!r}), got {spec['high']!r}")
            param.low, param.high = low, high
            if spec.get("step") is not None:
                step = _number(spec["step"], f"{path}.step")
                if not step > 0 or dist == "loguniform":
                    raise InputError(f"{path}.step: expected a number > 0 (not with loguniform), got {spec['step']!r}")
                if dist == "int" and not float(step).is_integer():
                    raise InputError(f"{path}.step: expected an integer for distribution int, got {step!r}")
                param.step = step
            log = spec.get("log", False)
            if not isinstance(log, bool) or (log and dist != "int"):
                raise InputError(f"{path}.log: true/false, only for distribution int (use loguniform), got {log!r}")
            if log and low <= 0:
                raise InputError(f"{path}.low: must be > 0 with log: true, got {low!r}")
            param.log = log
        when = spec.get("when") or {}
        if not isinstance(when, dict):
            raise InputError(f"{path}.when: expected a mapping like {{lora.enabled: true}}, got {when!r}")
        earlier = {p.key for p in params}
        for wkey, allowed in when.items():
            if wkey not in earlier and wkey not in leaves:
                raise InputError(f"{path}.when.{wkey}: neither an earlier parameter nor a config key")
            param.when[wkey] = list(allowed) if isinstance(allowed, list) else [allowed]
        params.append(param)
        _probe(param, base, path)
    return params


def _probe(param: Param, base: dict, path: str) -> None:
    """Each bound / value applied to the base must give a valid run config."""
    for value in param.probes():
        data = apply_params(base, {param.key: value})
        try:
            cfg = from_dict(UnlearnConfig, data)
        except InputError as exc:
            raise InputError(f"{path}: value {value!r} gives an invalid run config: {exc}") from None
        if param.key == "method.subset.policy" and value == "reference" and not cfg.method.subset.reference_model:
            raise InputError(f"{path}.values: 'reference' needs method.subset.reference_model in the base config")


def resolve_metric(name: str) -> tuple[str, bool]:
    """An objective / constraint name -> (report path, is a ratio after / before)."""
    ratio = name.endswith("_ratio")
    core = name[:-len("_ratio")] if ratio else name
    if core in METRIC_ALIASES:
        return METRIC_ALIASES[core], ratio
    if re.fullmatch(r"el\d+", core):
        return f"forget.{core}", ratio
    parts = core.split(".")
    if parts[0] in REPORT_ROOTS and len(parts) <= 2 and all(parts):
        if parts[0] in ("forget", "unseen") and (len(parts) != 2 or not (
                parts[1] in SECTION_METRICS or re.fullmatch(r"el\d+", parts[1]))):
            raise ValueError(name)
        if parts[0] == "retain" and parts[1:] != ["ppl"]:
            raise ValueError(name)
        return core, ratio
    raise ValueError(name)


def _metric_needs(path: str, key: str, base: dict, params: list[Param]) -> None:
    sampled = {p.key for p in params}
    m = re.fullmatch(r"(?:forget|unseen)\.el(\d+)", path)
    if m and "eval.el_n" not in sampled and int(m.group(1)) not in get_path(base, "eval.el_n", []):
        raise InputError(f"{key}: el{m.group(1)} needs {m.group(1)} in the base config's eval.el_n "
                         f"(now {get_path(base, 'eval.el_n')})")
    if path.startswith("unseen.") or path.startswith("mia"):
        if not get_path(base, "data.unseen"):
            raise InputError(f"{key}: '{path}' needs data.unseen in the base config")
    if path.startswith("mia") and not get_path(base, "eval.mia"):
        raise InputError(f"{key}: '{path}' needs eval.mia: true in the base config")
    if path.startswith(("mauve", "rep")):
        if not get_path(base, "eval.mauve.enabled") or not get_path(base, "data.prompts"):
            raise InputError(f"{key}: '{path}' needs eval.mauve.enabled and data.prompts in the base config")
    if path.startswith("retain.") and not get_path(base, "data.heldout"):
        raise InputError(f"{key}: '{path}' needs data.heldout in the base config")


def _parse_objectives(raw: Any, base: dict, params: list[Param]) -> list[ObjectiveSpec]:
    if raw is None:
        raw = DEFAULT_OBJECTIVES
    if not isinstance(raw, list) or not raw:
        raise InputError(f"objectives: expected a non-empty list like [{{name: el3, mode: min}}], got {raw!r}")
    out: list[ObjectiveSpec] = []
    for i, item in enumerate(raw):
        key = f"objectives[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise InputError(f"{key}: expected a mapping {{name, mode}}, got {item!r}")
        for sub in item:
            if sub not in ("name", "mode", "metric", "reference"):
                raise InputError(f"{key}.{sub}: unknown key (known: name, mode, metric, reference)")
        name = item.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise InputError(f"{key}.name: expected a metric name such as el3 or mauve, got {name!r}")
        metric = item.get("metric") or name
        try:
            path, ratio = resolve_metric(metric)
        except ValueError:
            raise InputError(f"{key}.{'metric' if 'metric' in item else 'name'}: unknown metric {metric!r} "
                             f"(known: el<n>, {', '.join(METRIC_ALIASES)}, a report path like unseen.ma, "
                             "any of them + _ratio)") from None
        _metric_needs(path, key, base, params)
        default_mode = "max" if path in ("mauve",) else "min"
        mode = item.get("mode", default_mode)
        if mode not in ("min", "max"):
            raise InputError(f"{key}.mode: expected min or max, got {mode!r}")
        if any(o.name == name for o in out):
            raise InputError(f"{key}.name: objective {name!r} given twice")
        reference = None
        if item.get("reference") is not None:
            reference = float(_number(item["reference"], f"{key}.reference"))
        out.append(ObjectiveSpec(name, mode, metric, reference))
    return out


_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|<|>)\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*$")


def _parse_constraints(raw: Any, base: dict, params: list[Param]) -> list[ConstraintSpec]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InputError(f"constraints: expected a list like ['retain_ppl_ratio <= 1.1'], got {raw!r}")
    out = []
    for i, item in enumerate(raw):
        key = f"constraints[{i}]"
        if isinstance(item, dict):
            for sub in item:
                if sub not in ("metric", "max", "min"):
                    raise InputError(f"{key}.{sub}: unknown key (known: metric, max, min)")
            if ("max" in item) == ("min" in item) or "metric" not in item:
                raise InputError(f"{key}: expected {{metric: NAME, max: X}} or {{metric: NAME, min: X}}")
            op = "<=" if "max" in item else ">="
            metric, bound = str(item["metric"]), _number(item.get("max", item.get("min")), key)
        elif isinstance(item, str):
            m = _CONSTRAINT.match(item)
            if not m:
                raise InputError(f"{key}: expected 'METRIC <= NUMBER' or 'METRIC >= NUMBER', got {item!r}")
            metric, op, bound = m.group(1), m.group(2), float(m.group(3))
            op = {"<": "<=", ">": ">="}.get(op, op)
        else:
            raise InputError(f"{key}: expected 'METRIC <= NUMBER', got {item!r}")
        try:
            path, _ = resolve_metric(metric)
        except ValueError:
            raise InputError(f"{key}: unknown metric {metric!r} (known: el<n>, {', '.join(METRIC_ALIASES)}, "
                             "a report path like unseen.ma, any of them + _ratio)") from None
        _metric_needs(path, key, base, params)
        out.append(ConstraintSpec(metric, op, float(bound)))
    return out


def _parse_initial_points(raw: Any, params: list[Param], base: dict) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InputError(f"initial_points: expected a list of {{parameter: value}} mappings, got {raw!r}")
    by_key = {p.key: p for p in params}
    out = []
    for i, point in enumerate(raw):
        key = f"initial_points[{i}]"
        if not isinstance(point, dict):
            raise InputError(f"{key}: expected a mapping of parameters to values, got {point!r}")
        for pk, value in point.items():
            if pk not in by_key:
                raise InputError(f"{key}.{pk}: not a parameter of this space (parameters: {', '.join(by_key)})")
            param = by_key[pk]
            if param.distribution in ("loguniform", "uniform") and isinstance(value, str):
                value = _number(value, f"{key}.{pk}")
                point[pk] = value
            if not param.contains(value):
                raise InputError(f"{key}.{pk}: {value!r} is outside the parameter's {param.describe()}")
        effective: dict = apply_params(base, {})
        for param in params:
            if param.active(effective) and param.key not in point:
                raise InputError(f"{key}: no value for parameter {param.key} (active at this point)")
            if param.key in point:
                effective = apply_params(effective, {param.key: point[param.key]})
        try:
            from_dict(UnlearnConfig, apply_params(base, point))
        except InputError as exc:
            raise InputError(f"{key}: gives an invalid run config: {exc}") from None
        out.append(dict(point))
    return out


# --------------------------------------------------------------------------------------------
# Metrics of a trial


def report_value(report: Mapping, path: str) -> float:
    value = get_path(report, path)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def metric_value(name: str, after: Mapping, before: Mapping | None) -> float:
    path, ratio = resolve_metric(name)
    value = report_value(after, path)
    if not ratio:
        return value
    ref = report_value(before or {}, path)
    if not math.isfinite(ref) or ref == 0:
        return math.nan
    return value / ref


def final_metrics(space: SearchSpace, after: Mapping, before: Mapping | None) -> dict:
    """Objectives, constraint metrics and violations of one evaluated trial."""
    out: dict[str, Any] = {}
    for o in space.objectives:
        out[o.name] = metric_value(o.metric, after, before)
    violations = []
    for c in space.constraints:
        value = metric_value(c.metric, after, before)
        out.setdefault(c.metric, value)
        violations.append(c.violation(value))
    out["constraint_violations"] = violations
    out["feasible"] = all(v <= 0 for v in violations)
    return out


# --------------------------------------------------------------------------------------------
# Optuna: define-by-run space, sampler, searcher


class DefineByRun:
    """The define-by-run space function OptunaSearch calls per trial: conditional parameters
    are suggested only when their `when` holds for the values sampled so far."""

    def __init__(self, params: list[Param], base: dict):
        self.params = params
        self.base = base

    def __call__(self, trial) -> None:
        chosen: dict[str, Any] = {}
        for param in self.params:
            if param.active(apply_params(self.base, chosen)):
                chosen[param.key] = param.suggest(trial)
        return None


def optuna_constraints(trial) -> list[float]:
    """Optuna constraints_func: the violations the trial reported (<= 0 feasible)."""
    return list(trial.user_attrs.get("constraints", []))


def _trial_constraints_api() -> bool:
    """Optuna >= 5 records constraints on the trial (Trial.set_constraint); constraints_func
    on the sampler is deprecated there."""
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


def make_sampler(budget: Budget, has_constraints: bool):
    import optuna

    kwargs = dict(budget.sampler_options)
    if budget.sampler == "random":
        return optuna.samplers.RandomSampler(seed=budget.seed, **kwargs)
    cls = optuna.samplers.TPESampler if budget.sampler == "tpe" else optuna.samplers.NSGAIISampler
    if has_constraints and not _trial_constraints_api():
        kwargs["constraints_func"] = optuna_constraints
    return cls(seed=budget.seed, **kwargs)


class _LazyBase:
    pass


try:  # OptunaSearch is importable wherever Ray Tune is; keep the module importable without it
    from ray.tune.search.optuna import OptunaSearch as _OptunaSearch
except Exception:  # pragma: no cover
    _OptunaSearch = _LazyBase  # type: ignore[misc,assignment]


class UndialOptunaSearch(_OptunaSearch):  # type: ignore[misc,valid-type]
    """OptunaSearch that (1) records the Tune trial id on the Optuna trial, (2) hands the
    reported constraint violations to Optuna's constraints function, (3) tells Optuna FAIL
    (not an exception) when a multi-objective trial errored or has a missing / NaN objective."""

    def __init__(self, *args, constraint_names: Sequence[str] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self._constraint_names = list(constraint_names)

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        trial = self._ot_trials.get(trial_id)
        if trial is not None:
            try:
                trial.set_user_attr("tune_trial_id", trial_id)
            except Exception:
                pass
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        import optuna

        if trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return
        metrics = self._metric if isinstance(self._metric, list) else [self._metric]
        values = None
        if result and not error:
            raw = [result.get(m) for m in metrics]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in raw):
                values = [float(v) for v in raw]
        try:
            if values is not None:
                violations = result.get("constraint_violations") if result else None
                if violations is not None:
                    clean = [float(v) if math.isfinite(v) else 1e30 for v in violations]
                    ot_trial.set_user_attr("constraints", clean)  # shown in optuna-dashboard
                    if hasattr(ot_trial, "set_constraint"):
                        names = getattr(self, "_constraint_names", []) or [f"c{i}" for i in range(len(clean))]
                        for name, value in zip(names, clean):
                            ot_trial.set_constraint(name, value)
                self._ot_study.tell(ot_trial, values if len(values) > 1 else values[0],
                                    state=optuna.trial.TrialState.COMPLETE)
            else:
                self._ot_study.tell(ot_trial, None, state=optuna.trial.TrialState.FAIL)
        except Exception as exc:  # e.g. told already (a resumed sweep)
            import logging

            logging.getLogger(__name__).warning("optuna: could not record trial %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)


def optuna_storage_url(sweep_dir: Path) -> str:
    return f"sqlite:///{Path(sweep_dir).resolve() / 'optuna.db'}"


def build_searcher(space: SearchSpace, storage_url: str):
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    storage = optuna.storages.RDBStorage(storage_url)
    searcher = UndialOptunaSearch(
        space=DefineByRun(space.parameters, space.base),
        metric=[o.name for o in space.objectives], mode=[o.mode for o in space.objectives],
        sampler=make_sampler(space.budget, bool(space.constraints)), study_name=space.name, storage=storage,
        points_to_evaluate=[dict(p) for p in space.initial_points] or None,
        constraint_names=[c.text for c in space.constraints])
    return ConcurrencyLimiter(searcher, max_concurrent=space.budget.max_concurrent_trials)


# --------------------------------------------------------------------------------------------
# Per-step metrics to MLflow from the Ray Train controller


try:
    from ray.train.v2.api.callback import UserCallback as _UserCallback
except Exception:  # pragma: no cover
    _UserCallback = _LazyBase  # type: ignore[misc,assignment]


class StepLogger(_UserCallback):  # type: ignore[misc,valid-type]
    """A Ray Train callback (it runs in the Train controller): every report of rank 0 goes
    to the trial's MLflow run as `train.<name>` metrics at its step, in batches."""

    SKIP = ("step", "final", "checkpoint_path")

    def __init__(self, tracking_uri: str, run_id: str, flush_every: int = 25):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.flush_every = flush_every
        self._rows: list[tuple[str, float, int, int]] = []
        self._tracker = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tracker"] = None
        state["_rows"] = []
        return state

    def after_report(self, run_context, metrics, checkpoint):
        m = metrics[0] if metrics else {}
        step = int(m.get("step", 0) or 0)
        now = int(time.time() * 1000)
        for key, value in m.items():
            if key in self.SKIP or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                self._rows.append((f"train.{key}", float(value), now, step))
        if m.get("final") or "forget_ma" in m or len(self._rows) >= self.flush_every:
            self.flush()

    def after_exception(self, run_context, worker_exceptions):
        self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        try:
            from orchestrator.tracking import Tracker

            if self._tracker is None:
                self._tracker = Tracker(self.tracking_uri)
            self._tracker.log_metric_rows(self.run_id, rows)
        except Exception as exc:  # tracking must never break training
            print(f"warning: MLflow step metrics not logged: {str(exc).splitlines()[0]}")


# --------------------------------------------------------------------------------------------
# The trial (a Tune function trainable)


@dataclass
class SweepContext:
    """What every trial needs from the driver (travels through tune.with_parameters)."""
    space: SearchSpace
    sweep_dir: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    demo_dir: str | None
    original: dict


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(value: Any):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _root_error(exc: BaseException) -> str:
    from orchestrator.launcher import _unwrap_worker_error

    root = _unwrap_worker_error(exc)
    text = str(root).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(root).__name__}: {first}" if first else type(root).__name__


def trial_config(space: SearchSpace, params: Mapping[str, Any], demo_dir: str | None
                 ) -> tuple[UnlearnConfig, UnlearnConfig]:
    """(portable config, runnable config) of a trial: the portable one keeps "demo:" paths."""
    plain = apply_params(space.base, params)
    portable = from_dict(UnlearnConfig, plain)
    if demo_dir and portable.uses_demo():
        return portable, from_dict(UnlearnConfig, resolve_demo_paths(plain, Path(demo_dir)))
    return portable, portable


def _final_checkpoint(run_dir: Path) -> Path | None:
    """A finished Train run's last checkpoint (model/ + train_result.json), if one was saved."""
    if not run_dir.is_dir():
        return None
    found = [p.parent for p in run_dir.glob("checkpoint_*/train_result.json") if (p.parent / "model").is_dir()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def train_trial(cfg: UnlearnConfig, trial_dir: Path, sweep: SweepContext, trial_id: str, run_id: str,
                log=print) -> dict:
    """Fit the trial's TorchTrainer (or pick up what an interrupted attempt finished)."""
    import ray.train
    from ray.tune.integration.ray_train import TuneReportCallback

    from orchestrator.launcher import build_trainer, fetch_result

    done = trial_dir / "train_result.json"
    model_dir = trial_dir / "model"
    if done.is_file() and model_dir.is_dir():
        log(f"trial {trial_id}: training finished in an earlier attempt")
        return json.loads(done.read_text())
    storage = Path(sweep.sweep_dir) / "train"
    run_dir = storage / trial_id
    final = _final_checkpoint(run_dir)
    if final is None:
        callbacks = [TuneReportCallback(), StepLogger(sweep.tracking_uri, run_id)]
        trainer = build_trainer(cfg, model_dir, storage, name=trial_id, callbacks=callbacks)
        result = trainer.fit()
        checkpoint = result.checkpoint
    else:
        log(f"trial {trial_id}: using the final checkpoint of an earlier attempt")
        checkpoint = ray.train.Checkpoint.from_directory(str(final))
    train_result = fetch_result(checkpoint, model_dir)
    _write_json(done, train_result)
    shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints hold optimizer state: disk
    return train_result


def backfill_curve(tracker, run_id: str, train_result: Mapping) -> int:
    """Log what the training result holds per step (train_result["curve"]: loss, grad_norm,
    lr, ... every step; train_result["history"]: the evaluations, step 0 included) for the
    (metric, step) pairs StepLogger did not log live: Ray Train reports only every log_every /
    eval step, and an attempt that found its training done reports nothing. Returns the number
    of values added."""
    from orchestrator.tracking import retry

    points: dict[tuple[str, int], float] = {}
    for series in (train_result.get("curve") or [], train_result.get("history") or []):
        for point in series:
            step = int(point.get("step", 0))
            for key, value in point.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and math.isfinite(value):
                    points.setdefault((f"train.{key}", step), float(value))
    if not points:
        return 0
    have: dict[str, set[int]] = {}
    for key in {k for k, _ in points}:
        have[key] = {m.step for m in retry(tracker.client.get_metric_history, run_id, key)}
    now = int(time.time() * 1000)
    rows = [(key, value, now, step) for (key, step), value in sorted(points.items(), key=lambda kv: kv[0][1])
            if step not in have[key]]
    if rows:
        tracker.log_metric_rows(run_id, rows)
    return len(rows)


def evaluate_trial(cfg: UnlearnConfig, model_dir: Path, log=print) -> dict:
    from orchestrator.unlearn import evaluate_path
    from trainables.data import load_datasets
    from trainables.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path, cfg.model.trust_remote_code,
                               cfg.model.revision)
    data = load_datasets(cfg.data, tokenizer, need_retain=False)
    return evaluate_path(cfg, str(model_dir), data, tokenizer, log=log)


def _tune_report(final: Mapping, run_id: str, steps: int | None) -> dict:
    out: dict[str, Any] = {}
    for key, value in final.items():
        if key == "feasible":
            out[key] = int(bool(value))
        elif key == "constraint_violations":
            out[key] = [float(v) for v in value]
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    out["mlflow_run_id"] = run_id
    out["evaluated"] = 1
    if steps is not None:
        out["step"] = steps
    return out


def run_trial(config: dict, sweep: SweepContext) -> None:
    """One trial: config -> TorchTrainer fit -> evaluation -> objectives to Tune and MLflow."""
    import ray.tune
    import torch

    from orchestrator.tracking import Tracker, numeric

    tctx = ray.tune.get_context()
    trial_id, trial_name = tctx.get_trial_id(), tctx.get_trial_name()
    params = {k: v for k, v in config.items()}
    space = sweep.space
    trial_dir = Path(sweep.sweep_dir) / "trials" / trial_id
    trial_dir.mkdir(parents=True, exist_ok=True)
    result_file = trial_dir / "result.json"
    with open(trial_dir / "attempts.log", "a") as fh:  # one line per start of this trial
        fh.write(json.dumps({"time": time.time(), "pid": os.getpid(),
                             "kind": "report-saved" if result_file.is_file() else "run"}) + "\n")
    log = lambda msg: print(f"[{trial_name}] {msg}", flush=True)  # noqa: E731

    tracker = Tracker(sweep.tracking_uri)
    run_id = tracker.child_run(sweep.experiment_id, sweep.parent_run_id, trial_id, trial_name,
                               tags={"tune_trial_name": trial_name})
    status = {"trial_id": trial_id, "trial_name": trial_name, "run_id": run_id, "params": params,
              "status": "running"}
    _write_json(trial_dir / "status.json", status)
    torch.set_num_threads(space.budget.eval_threads)
    try:
        if result_file.is_file():  # finished before the driver could record it (a resumed sweep)
            saved = json.loads(result_file.read_text())
            log("finished in an earlier attempt; reporting its result")
            status["status"] = "finished"
            _write_json(trial_dir / "status.json", status)
            tracker.finish(run_id)
            ray.tune.report(_tune_report(saved["objectives"], run_id, saved.get("steps")))
            return
        portable, cfg = trial_config(space, params, sweep.demo_dir)
        (trial_dir / "config.yaml").write_text(dump_yaml(portable))
        derived = {"lora.enabled": cfg.lora.enabled, "finetuning": f"lora r={cfg.lora.rank}" if cfg.lora.enabled
                   else "full"}
        tracker.log_params(run_id, {**params, **derived})
        tracker.log_artifact(run_id, trial_dir / "config.yaml")
        log(f"training: {', '.join(f'{k}={v}' for k, v in params.items())}")
        train_result = train_trial(cfg, trial_dir, sweep, trial_id, run_id, log)
        try:
            backfill_curve(tracker, run_id, train_result)
        except Exception as exc:  # tracking must not fail the trial
            log(f"warning: per-step metrics not logged: {str(exc).splitlines()[0]}")
        log("evaluating the trial's model ...")
        after = evaluate_trial(cfg, trial_dir / "model", log=lambda *a, **k: None)
        final = final_metrics(space, after, sweep.original)
        training = {k: train_result.get(k) for k in ("best_step", "steps", "stopped", "seconds")}
        _write_json(trial_dir / "metrics.json", {"before": sweep.original, "after": after, "training": training})
        tracker.log_artifact(run_id, trial_dir / "metrics.json")
        logged = {k: v for k, v in final.items() if k not in ("constraint_violations", "feasible")}
        logged.update({f"after.{k}": v for k, v in numeric(after).items()})
        logged.update({f"training.{k}": float(v) for k, v in training.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)})
        logged["feasible"] = float(bool(final["feasible"]))
        for i, v in enumerate(final["constraint_violations"]):
            logged[f"constraint_violation.{i}"] = v if math.isfinite(v) else 1e30
        tracker.log_metrics(run_id, logged, step=int(train_result.get("steps") or 0))
        if space.tracking.log_models == "all":
            tracker.log_artifacts(run_id, trial_dir / "model", "model")
            tracker.set_tags(run_id, {"model_logged": "true"})
        _write_json(result_file, {"trial_id": trial_id, "run_id": run_id, "params": params, "objectives": final,
                                  "steps": train_result.get("steps"), "training": training})
        status["status"] = "finished"
        _write_json(trial_dir / "status.json", status)
        tracker.finish(run_id)
        shown = ", ".join(f"{o.name} {final[o.name]:.4f}" for o in space.objectives)
        log(f"done: {shown}" + ("" if final["feasible"] else " (violates a constraint)"))
        ray.tune.report(_tune_report(final, run_id, train_result.get("steps")))
    except Exception as exc:
        message = _root_error(exc)
        details = traceback.format_exc()
        status.update(status="failed", error=message)
        try:
            _write_json(trial_dir / "status.json", status)
            (trial_dir / "error.txt").write_text(details)
            tracker.fail(run_id, message, details)
        except Exception:
            pass
        log(f"failed: {message}")
        raise


def _trial_name(trial) -> str:
    return f"trial_{trial.trial_id}"


def _trial_dirname(trial) -> str:
    return trial.trial_id


# --------------------------------------------------------------------------------------------
# The driver


@dataclass
class SweepPaths:
    root: Path

    @property
    def state(self) -> Path:
        return self.root / "sweep.json"

    @property
    def space(self) -> Path:
        return self.root / "space.yaml"

    @property
    def tune(self) -> Path:
        return self.root / "ray" / "tune"

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def pareto(self) -> Path:
        return self.root / "pareto"

    @property
    def original(self) -> Path:
        return self.root / "original" / "metrics.json"


def evaluate_original(space: SearchSpace, demo_dir: str | None, path: Path, log=print) -> dict:
    """The original model's evaluation (the "before" of every trial), cached in the sweep."""
    if path.is_file():
        return json.loads(path.read_text())["metrics"]
    import torch

    portable, cfg = trial_config(space, {}, demo_dir)
    log(f"evaluating the original model ({cfg.model.name_or_path}) ...")
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    metrics = evaluate_trial(cfg, Path(cfg.model.name_or_path), log=lambda *a, **k: None)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, {"model": portable.model.name_or_path, "metrics": metrics,
                       "seconds": time.perf_counter() - t0})
    torch.set_num_threads(threads)
    return metrics


def _reporter(space: SearchSpace):
    from ray.tune import CLIReporter

    metric_columns = {"step": "step", "loss": "loss", "forget_ma": "forget MA", "heldout_ppl": "ppl"}
    for o in space.objectives:
        metric_columns[o.name] = f"{o.name} {'↓' if o.mode == 'min' else '↑'}"
    for c in space.constraints:
        metric_columns.setdefault(c.metric, c.metric)
    params = {p.key: p.key.split(".")[-1] for p in space.parameters}
    return CLIReporter(metric_columns=metric_columns, parameter_columns=params, max_report_frequency=30,
                       max_progress_rows=max(20, space.budget.num_samples), print_intermediate_tables=True)


def _trial_resources(budget: Budget) -> dict:
    out = {}
    for key, value in budget.trial_resources.items():
        out[key.lower() if key.upper() in ("CPU", "GPU") else key] = float(value)
    out.setdefault("cpu", 0.0)
    if not any(v > 0 for v in out.values()):
        # Ray refuses an all-zero bundle; a token of logical memory keeps the trial at 0 CPU so
        # that the Train workers get every core.
        out["memory"] = float(64 * 2**20)
    return out


def run_sweep(space: SearchSpace, output: str | Path, resume: bool = False, overwrite: bool = False,
              log=print) -> dict:
    """Run (or resume) a sweep; returns the summary that summary.json holds."""
    from orchestrator.tracking import Tracker, default_tracking_uri, git_state, project_version

    t_start = time.time()
    paths = SweepPaths(Path(output).resolve())
    state: dict = {}
    if resume:
        if not paths.state.is_file():
            raise InputError(f"--resume: {paths.root} holds no sweep to resume (no sweep.json)")
        state = json.loads(paths.state.read_text())
        saved = yaml.safe_load(paths.space.read_text())
        if saved != yaml.safe_load(space.dump()):
            raise InputError(f"--resume: the search space differs from the one {paths.root} started with "
                             f"({paths.space}); resume with the same file and overrides (or without SPACE)")
    elif paths.root.exists() and (not paths.root.is_dir() or any(paths.root.iterdir())):
        if not overwrite:
            raise InputError(f"--output: {paths.root} exists and is not empty (pass --resume to continue that "
                             "sweep, or --overwrite to start again)")
        shutil.rmtree(paths.root)
    paths.root.mkdir(parents=True, exist_ok=True)
    if not resume:
        paths.space.write_text(space.dump())

    demo_dir = None
    base_cfg = from_dict(UnlearnConfig, space.base)
    if base_cfg.uses_demo():
        from trainables.demo import ensure_demo

        demo_dir = str(ensure_demo(log=log))

    # ---- MLflow: experiment and parent run, created here before any trial starts
    uri = default_tracking_uri(paths.root, space.tracking.uri)
    tracker = Tracker(uri)
    local_store = uri.startswith("sqlite:")
    artifact_location = (paths.root / "mlartifacts").as_uri() if local_store else None
    experiment_name = space.tracking.experiment or space.name
    experiment_id = tracker.experiment(experiment_name, artifact_location)
    parent_id = state.get("parent_run_id")
    if parent_id and state.get("tracking_uri") == uri and tracker.run_exists(parent_id):
        tracker.client.update_run(parent_id, status="RUNNING")
        log(f"resuming sweep {space.name}: MLflow parent run {parent_id}")
    else:
        from orchestrator.tracking import KIND_TAG, SWEEP_TAG

        parent_id = tracker.create_run(experiment_id, space.name, {
            KIND_TAG: "sweep", SWEEP_TAG: str(paths.root), "undial.version": project_version(),
            **git_state(), "sampler": space.budget.sampler})
        tracker.log_params(parent_id, {
            "space.name": space.name, "sampler": space.budget.sampler, "seed": space.budget.seed,
            "num_samples": space.budget.num_samples, "max_concurrent_trials": space.budget.max_concurrent_trials,
            "objectives": ", ".join(f"{o.name} ({o.mode})" for o in space.objectives),
            "constraints": "; ".join(c.text for c in space.constraints) or "none",
            **{f"space.{p.key}": p.describe() for p in space.parameters}})
        (paths.root / "base_config.yaml").write_text(dump_yaml(space.base))
        tracker.log_artifact(parent_id, paths.space)
        tracker.log_artifact(parent_id, paths.root / "base_config.yaml")
    state.update(parent_run_id=parent_id, experiment_id=experiment_id, experiment=experiment_name,
                 tracking_uri=uri, optuna_storage=optuna_storage_url(paths.root), study=space.name,
                 demo_dir=demo_dir)
    state.setdefault("started", t_start)
    _write_json(paths.state, state)

    original = evaluate_original(space, demo_dir, paths.original, log)
    tracker.log_metrics(parent_id, {f"original.{k}": v for k, v in _numeric(original).items()})
    tracker.log_artifact(parent_id, paths.original, "original")

    # ---- Ray Tune
    import ray
    from ray import tune

    from orchestrator.launcher import ensure_ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")        # Tune's CLIReporter table, with our columns
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # step reports carry no objectives
    started_ray = not ray.is_initialized()
    ensure_ray(log)
    ctx = SweepContext(space=space, sweep_dir=str(paths.root), tracking_uri=uri, experiment_id=experiment_id,
                       parent_run_id=parent_id, demo_dir=demo_dir, original=original)
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=ctx), _trial_resources(space.budget))
    try:
        if resume and tune.Tuner.can_restore(str(paths.tune)):
            log(f"resuming the Tune experiment at {paths.tune}")
            tuner = tune.Tuner.restore(str(paths.tune), trainable=trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=build_searcher(space, state["optuna_storage"]),
                                            num_samples=space.budget.num_samples,
                                            trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname,
                                            time_budget_s=space.budget.time_budget_s, reuse_actors=True),
                run_config=tune.RunConfig(name=paths.tune.name, storage_path=str(paths.tune.parent),
                                          failure_config=tune.FailureConfig(max_failures=space.budget.max_failures),
                                          progress_reporter=_reporter(space), verbose=1))
        log(f"sweep {space.name}: {space.budget.num_samples} trials, at most {space.budget.max_concurrent_trials} "
            f"at a time, sampler {space.budget.sampler} (seed {space.budget.seed}); MLflow {uri}")
        grid = tuner.fit()
        summary = finalize(space, paths, tracker, state, grid, original, log=log)
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    summary["wall_seconds"] = time.time() - t_start
    _write_json(paths.root / "summary.json", summary)
    return summary


def _numeric(tree: Mapping) -> dict[str, float]:
    from orchestrator.tracking import numeric

    return numeric(tree)


def collect_trials(space: SearchSpace, sweep_dir: Path, tune_status: Mapping[str, dict] | None = None) -> list[dict]:
    """One row per trial: objectives, feasibility, status, params, MLflow run id."""
    rows = []
    trial_ids = list(tune_status) if tune_status is not None else \
        sorted(p.name for p in (sweep_dir / "trials").glob("*") if p.is_dir())
    for trial_id in trial_ids:
        tdir = sweep_dir / "trials" / trial_id
        status = json.loads((tdir / "status.json").read_text()) if (tdir / "status.json").is_file() else {}
        result = json.loads((tdir / "result.json").read_text()) if (tdir / "result.json").is_file() else None
        tune_info = (tune_status or {}).get(trial_id, {})
        row: dict[str, Any] = {"trial_id": trial_id}
        params = status.get("params") or tune_info.get("config") or {}
        if result is not None and not tune_info.get("error"):
            objectives = result["objectives"]
            for o in space.objectives:
                row[o.name] = objectives.get(o.name)
            for c in space.constraints:
                row.setdefault(c.metric, objectives.get(c.metric))
            row["feasible"] = bool(objectives.get("feasible", True))
            row["status"] = "ok" if row["feasible"] else "infeasible"
        else:
            for o in space.objectives:
                row[o.name] = None
            row["feasible"] = False
            if tune_info.get("error") or status.get("status") == "failed":
                row["status"] = "failed"
                row["error"] = status.get("error") or tune_info.get("error")
            else:
                row["status"] = "unfinished"
        row["run_id"] = status.get("run_id") or tune_info.get("run_id")
        row["params"] = params
        rows.append(row)
    return rows


def front_rows(space: SearchSpace, rows: list[dict]) -> list[dict]:
    """Rows for the Pareto front: infeasible / failed rows lose their objective values (on no
    front, no hypervolume) but stay in the count."""
    out = []
    for row in rows:
        r = {"trial_id": row["trial_id"]}
        for o in space.objectives:
            r[o.name] = row.get(o.name) if row["status"] == "ok" else None
        r["params"] = row.get("params") or {}
        r["run_id"] = row.get("run_id")
        out.append(r)
    return out


def _tune_status(grid) -> dict[str, dict]:
    out = {}
    for result in grid:
        path = Path(result.path) if result.path else None
        trial_id = (result.metrics or {}).get("trial_id") or (path.name if path else None)
        if trial_id is None:
            continue
        err = result.error
        out[trial_id] = {"error": _root_error(err) if err is not None else None, "config": dict(result.config or {}),
                         "run_id": (result.metrics or {}).get("mlflow_run_id")}
    return out


def finalize(space: SearchSpace, paths: SweepPaths, tracker, state: dict, grid, original: dict, log=print) -> dict:
    """The front, its files and hypervolume on the parent run; `pareto` tags and Pareto-optimal
    models on the child runs; failed trials marked FAILED; the final printout."""
    from orchestrator.tracking import PARETO_TAG, TRIAL_TAG, ui_command

    parent_id, experiment_id = state["parent_run_id"], state["experiment_id"]
    status = _tune_status(grid)
    rows = collect_trials(space, paths.root, status)
    objs = space.objective_list
    frows = front_rows(space, rows)
    reference = space_reference(space, frows)
    front = front_table(frows, objs)
    front_ids = {r["trial_id"] for r in front}
    hv = hypervolume(frows, objs, reference)
    files = write_front(frows, objs, paths.pareto, reference) if front else {}
    _write_trials_csv(paths.root / "trials.csv", space, rows)

    # ---- child runs: tags, models, failures, orphans
    children = {r.data.tags.get(TRIAL_TAG): r for r in tracker.child_runs(experiment_id, parent_id)}
    for row in rows:
        run = children.get(row["trial_id"])
        if run is None and row["status"] == "failed":  # died before it could open its run
            run_id = tracker.child_run(experiment_id, parent_id, row["trial_id"], f"trial_{row['trial_id']}")
            tracker.log_params(run_id, row["params"])
            tracker.fail(run_id, row.get("error") or "failed")
            row["run_id"] = run_id
            continue
        if run is None:
            continue
        run_id = run.info.run_id
        row["run_id"] = run_id
        if row["status"] == "failed":
            if run.info.status != "FAILED":
                tracker.fail(run_id, row.get("error") or "failed")
            continue
        if row["status"] in ("ok", "infeasible"):
            on_front = row["trial_id"] in front_ids
            tracker.set_tags(run_id, {PARETO_TAG: str(on_front).lower(), "feasible": str(row["feasible"]).lower()})
            model_dir = paths.trials / row["trial_id"] / "model"
            if on_front and space.tracking.log_models == "pareto" and model_dir.is_dir() \
                    and run.data.tags.get("model_logged") != "true":
                tracker.log_artifacts(run_id, model_dir, "model")
                tracker.set_tags(run_id, {"model_logged": "true"})
            if run.info.status != "FINISHED":
                tracker.finish(run_id)
    known = {r["trial_id"] for r in rows}
    for trial_id, run in children.items():
        if trial_id not in known and run.info.status == "RUNNING":
            tracker.set_tags(run.info.run_id, {"orphaned": "true"})
            tracker.finish(run.info.run_id, "KILLED")
    front_run_ids = {r["trial_id"]: r.get("run_id") for r in rows}
    for r in front:
        r["run_id"] = front_run_ids.get(r["trial_id"]) or r.get("run_id")

    # ---- parent run
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "infeasible", "failed", "unfinished")}
    tracker.log_metrics(parent_id, {"hypervolume": hv, "n_trials": len(rows), "n_completed": counts["ok"],
                                    "n_infeasible": counts["infeasible"], "n_failed": counts["failed"],
                                    "n_front": len(front)})
    for path in files.values():
        tracker.log_artifact(parent_id, path, "pareto")
    tracker.log_artifact(parent_id, paths.root / "trials.csv")
    complete = counts["unfinished"] == 0 and len(rows) >= space.budget.num_samples
    tracker.finish(parent_id, "FINISHED" if complete else "KILLED")

    # ---- printout
    best = {}
    for o in space.objectives:
        vals = [r[o.name] for r in front if r.get(o.name) is not None]
        if vals:
            best[o.name] = min(vals) if o.mode == "min" else max(vals)
    orig = {o.name: metric_value(o.metric, original, original) for o in space.objectives}
    lines = ["", format_front(frows, objs, reference)]
    if counts["infeasible"]:
        lines.append(f"{counts['infeasible']} trial(s) violate a constraint "
                     f"({'; '.join(c.text for c in space.constraints)}) and are on no front")
    if counts["failed"]:
        lines.append(f"{counts['failed']} trial(s) failed: " + "; ".join(
            f"{r['trial_id']}: {r.get('error')}" for r in rows if r["status"] == "failed"))
    lines.append("original model: " + ", ".join(f"{k} {v:.4f}" for k, v in orig.items()) +
                 ("   best on the front: " + ", ".join(f"{k} {v:.4f}" for k, v in best.items()) if best else ""))
    if front:
        lines.append("MLflow runs of the front (undial export RUN_ID --output FILE.yaml "
                     f"--tracking-uri {state['tracking_uri']}):")
        lines += [f"  {r['trial_id']}  {r['run_id']}" for r in front]
    lines.append(f"artifacts: {paths.root}  (pareto/, trials/, trials.csv, summary.json)")
    lines.append(f"MLflow:    experiment '{state['experiment']}', parent run {parent_id}")
    lines.append(f"           {ui_command(state['tracking_uri'])}   (children: tags.pareto = 'true')")
    lines.append(f"Optuna:    optuna-dashboard {state['optuna_storage']}")
    log("\n".join(lines))

    return {"name": space.name, "sweep_dir": str(paths.root), "trials": len(rows), "counts": counts,
            "objectives": [{"name": o.name, "mode": o.mode} for o in space.objectives],
            "reference": reference, "hypervolume": hv, "front": front, "original": orig, "best": best,
            "tracking_uri": state["tracking_uri"], "parent_run_id": parent_id,
            "pareto_files": {k: str(v) for k, v in files.items()}, "complete": complete}


def space_reference(space: SearchSpace, frows: list[dict]) -> dict:
    """The hypervolume reference point: an objective's `reference` from the space, else the
    worst possible value of objectives known to lie in [0, 1] (el*, mauve, ...), else derived
    from the trials (pareto.reference_point)."""
    objs = space.objective_list
    given = {o.name: o.reference for o in space.objectives if o.reference is not None}
    rest = [o for o in objs if o.name not in given]
    ref = dict(given)
    if rest:
        valid = [r for r in frows if all(r.get(o.name) is not None for o in rest)]
        try:
            ref.update(reference_point(rest, valid or None))
        except InputError:
            ref.update({o.name: 0.0 for o in rest})
    return {o.name: ref[o.name] for o in objs}


def _write_trials_csv(path: Path, space: SearchSpace, rows: list[dict]) -> None:
    import csv

    params = []
    for r in rows:
        params += [k for k in r["params"] if k not in params]
    cols = ["trial_id", "status"] + [o.name for o in space.objectives] + \
        [c.metric for c in space.constraints if c.metric not in {o.name for o in space.objectives}] + \
        ["run_id"] + params + ["error"]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in rows:
            w.writerow([r.get(c) if c not in params else r["params"].get(c) for c in cols])


def sweep_front(sweep_dir: str | Path) -> tuple[SearchSpace, list[dict], list[dict]]:
    """(space, rows, front rows) of a sweep folder, from its trial files (works mid-sweep)."""
    root = Path(sweep_dir)
    if not (root / "space.yaml").is_file():
        raise InputError(f"SWEEP: {root} is not a sweep folder (no space.yaml)")
    space = space_from_dict(yaml.safe_load((root / "space.yaml").read_text()))
    rows = collect_trials(space, root)
    return space, rows, front_rows(space, rows)
