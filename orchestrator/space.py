"""The search-space model of a sweep: a base run config plus distributions over dotted config
keys, objectives, constraints, a budget and tracking settings; parsing, validation, and
`apply_params` (a trial's params -> its run config).

A search space (YAML, `search_spaces/*.yaml`):

    parameters:        # dotted config keys -> distributions
      method.gamma:   {distribution: loguniform, low: 1, high: 50}
      train.lr:       {distribution: loguniform, low: 1.0e-5, high: 1.0e-3}
      method.subset.policy: {distribution: choice, values: [all, reference, spans]}
      lora.rank:      {distribution: choice, values: [0, 4, 8]}   # 0 (or off) = full fine-tuning
      method.subset.tau: {distribution: uniform, low: 0.5, high: 2, when: {method.subset.policy: reference}}
    objectives: [{name: el3, mode: min}, {name: mauve, mode: max}]
    constraints: ["retain_ppl_ratio <= 1.1"]
    report: [forget.ma, privleak.loss, forget_quality]   # shown beside the objectives, not optimised
    budget: {num_samples: 10, max_concurrent_trials: 2, sampler: tpe, seed: 0}

Pure: no torch, ray or mlflow (Optuna only to list a sampler's options), so `undial pareto`
and the CLI's refusals stay light.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from orchestrator.objectives import check_measurable, lookup_metric
from orchestrator.pareto import Objective
from trainables.config import UnlearnConfig, apply_overrides, check, from_dict, read_yaml, to_plain
from trainables.errors import InputError
from trainables.tree import deep_merge, get_path, set_path

CONFIG_SECTIONS = tuple(f.name for f in dataclasses.fields(UnlearnConfig))
SPACE_KEYS = ("name", "description", "base_config", "base", "parameters", "initial_points", "objectives",
              "constraints", "report", "budget", "tracking")
DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
PARAM_KEYS = ("distribution", "low", "high", "values", "step", "log", "when", "description")
DEFAULT_OBJECTIVES = [{"name": "el3", "mode": "min"}, {"name": "mauve", "mode": "max"}]
OFF_VALUES = ("off", "none", "full")


# --------------------------------------------------------------------------------------------
# Trial configs


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
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    max_failures: int = 1                        # Tune retries per trial (-1: forever)
    time_budget_s: float | None = None

    def validate(self, path: str) -> None:
        check(self.num_samples >= 1, f"{path}.num_samples", "expected an integer >= 1", self.num_samples)
        check(self.max_concurrent_trials >= 1, f"{path}.max_concurrent_trials", "expected an integer >= 1",
               self.max_concurrent_trials)
        check(self.workers_per_trial is None or self.workers_per_trial >= 1, f"{path}.workers_per_trial",
               "expected an integer >= 1", self.workers_per_trial)
        for key, value in (self.resources_per_worker or {}).items():
            check(value >= 0, f"{path}.resources_per_worker.{key}", "expected a number >= 0", value)
        for key, value in self.trial_resources.items():
            check(value >= 0, f"{path}.trial_resources.{key}", "expected a number >= 0", value)
        check(self.max_failures >= -1, f"{path}.max_failures", "expected an integer >= -1", self.max_failures)
        check(self.time_budget_s is None or self.time_budget_s > 0, f"{path}.time_budget_s",
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
    report: list[str] = field(default_factory=list)  # metrics shown beside the objectives, not optimised

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
            "report": list(self.report),
            "budget": to_plain(self.budget),
            "tracking": to_plain(self.tracking),
        }

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


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


def read_saved_space(path: Path) -> SearchSpace:
    """The canonical space a sweep folder holds (DIR/space.yaml), refused in one line naming
    the file when it is unreadable, not a mapping or not a valid space."""
    raw = read_yaml(path)  # missing / not YAML / not a mapping: one line naming the file
    if not raw:
        raise InputError(f"{path}: empty, not a saved search space")
    try:
        return space_from_dict(raw)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None

def _route_override(item: str, raw: Mapping) -> str:
    """`train.max_steps=5` -> `base.train.max_steps=5`; other keys address the space itself."""
    key = item.partition("=")[0]
    head = key.split(".", 1)[0]
    if head in CONFIG_SECTIONS and head not in SPACE_KEYS:
        return "base." + item
    return item




def _yaml_value(value: str, item: str) -> Any:
    try:
        return yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise InputError(f"override {item!r}: the value is not valid YAML ({problem})") from None


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
                parsed = _yaml_value(value, item)
                if not sub:
                    params[match] = parsed
                else:
                    spec = params[match] if isinstance(params[match], dict) else {}
                    params[match] = spec
                    apply_overrides(spec, [f"{sub}={value}"])
                continue
            if "." in rest and rest not in params:
                # a new parameter: parameters.<dotted key>=<spec as YAML>
                params[rest] = _yaml_value(value, item)
                continue
        apply_overrides(raw, [f"{key}={value}"])


def space_from_dict(raw: Mapping, overrides: Sequence[str] = (), base_dir: str | Path | None = None) -> SearchSpace:
    if not isinstance(raw, Mapping):
        raise InputError(f"search space: expected a mapping at the top level, got {type(raw).__name__}")
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
    report = _parse_report(raw.get("report"), base, parameters, objectives)
    initial = _parse_initial_points(raw.get("initial_points"), parameters, base)
    return SearchSpace(name=name, base=base, parameters=parameters, objectives=objectives,
                       constraints=constraints, budget=budget, tracking=tracking, initial_points=initial,
                       description=str(description), report=report)


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
        metric_entry, _ = lookup_metric(metric, f"{key}.{'metric' if 'metric' in item else 'name'}")
        check_measurable(metric_entry, key, base, {p.key for p in params})
        mode = item.get("mode", metric_entry.direction)
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
        metric_entry, _ = lookup_metric(metric, key)
        check_measurable(metric_entry, key, base, {p.key for p in params})
        out.append(ConstraintSpec(metric, op, float(bound)))
    return out


def _parse_report(raw: Any, base: dict, params: list[Param], objectives: list[ObjectiveSpec]) -> list[str]:
    """Metric names a sweep reports beside its objectives (front table, trials.csv, Pareto files):
    resolved and checked measurable like an objective, so a typo is refused before anything runs."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InputError(f"report: expected a list of metric names like [privleak.loss, forget_quality], got {raw!r}")
    out: list[str] = []
    for i, name in enumerate(raw):
        key = f"report[{i}]"
        if not isinstance(name, str) or not name or "/" in name:
            raise InputError(f"{key}: expected a metric name such as forget_quality, got {name!r}")
        metric_entry, _ = lookup_metric(name, key)
        check_measurable(metric_entry, key, base, {p.key for p in params})
        if any(o.name == name for o in objectives):
            raise InputError(f"{key}: {name!r} is already an objective")
        if name in out:
            raise InputError(f"{key}: {name!r} is already listed")
        out.append(name)
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


