"""Optuna behind Ray Tune: the define-by-run space (conditional parameters), the sampler, the
OptunaSearch subclass that records constraints and failures, and its RDB storage.

Imported only where Ray Tune runs (the sweep driver); Ray and Optuna are plain imports here.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

import optuna
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from orchestrator.space import Budget, Param, SearchSpace, apply_params

log = logging.getLogger(__name__)


class DefineByRun:
    """The define-by-run space, called with each trial's optuna.Trial: conditional parameters
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
    return hasattr(optuna.trial.Trial, "set_constraint")


def make_sampler(budget: Budget, has_constraints: bool) -> optuna.samplers.BaseSampler:
    kwargs = dict(budget.sampler_options)
    if budget.sampler == "random":
        return optuna.samplers.RandomSampler(seed=budget.seed, **kwargs)
    cls = optuna.samplers.TPESampler if budget.sampler == "tpe" else optuna.samplers.NSGAIISampler
    if has_constraints and not _trial_constraints_api():
        kwargs["constraints_func"] = optuna_constraints
    return cls(seed=budget.seed, **kwargs)


class UndialOptunaSearch(OptunaSearch):
    """OptunaSearch that (1) records the Tune trial id on the Optuna trial, (2) hands the
    reported constraint violations to Optuna, (3) tells Optuna FAIL (not an exception) when a
    trial errored or has a missing / NaN objective.

    It asks and tells through its own `optuna.Study` handle on the same storage (Optuna's public
    ask-and-tell API) and keeps its own trial map; OptunaSearch still creates the study and
    enqueues the initial points, and pickles this object (its __dict__) for Tuner.restore."""

    def __init__(self, space: DefineByRun, *, sampler, study_name: str, storage,
                 constraint_names: Sequence[str] = (), **kwargs):
        super().__init__(space=space, sampler=sampler, study_name=study_name, storage=storage, **kwargs)
        self.define_by_run = space
        self.study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
        self.live_trials: dict[str, optuna.trial.Trial] = {}
        self.told: set[str] = set()
        self.constraint_names = list(constraint_names)

    def suggest(self, trial_id: str) -> dict:
        trial = self.live_trials.get(trial_id)
        if trial is None:
            trial = self.study.ask()  # an enqueued initial point first, if any is waiting
            trial.set_user_attr("tune_trial_id", trial_id)
            self.live_trials[trial_id] = trial
        self.define_by_run(trial)
        return dict(trial.params)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id in self.told:
            return
        trial = self.live_trials.get(trial_id)
        if trial is None:
            return
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = None
        if result and not error:
            raw = [result.get(m) for m in metrics]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in raw):
                values = [float(v) for v in raw]
        try:
            if values is not None:
                violations = result.get("constraint_violations")
                if violations is not None:
                    clean = [float(v) if math.isfinite(v) else 1e30 for v in violations]
                    trial.set_user_attr("constraints", clean)  # shown in optuna-dashboard
                    if _trial_constraints_api():
                        names = self.constraint_names or [f"c{i}" for i in range(len(clean))]
                        for name, value in zip(names, clean):
                            trial.set_constraint(name, value)
                self.study.tell(trial, values if len(values) > 1 else values[0],
                                state=optuna.trial.TrialState.COMPLETE)
            else:
                self.study.tell(trial, None, state=optuna.trial.TrialState.FAIL)
        except Exception as exc:  # e.g. told already (a resumed sweep)
            log.warning("optuna: could not record trial %s: %s", trial_id, exc)
        self.told.add(trial_id)


def optuna_storage_url(sweep_dir: Path) -> str:
    return f"sqlite:///{Path(sweep_dir).resolve() / 'optuna.db'}"


def build_searcher(space: SearchSpace, storage_url: str) -> ConcurrencyLimiter:
    searcher = UndialOptunaSearch(
        DefineByRun(space.parameters, space.base),
        metric=[o.name for o in space.objectives], mode=[o.mode for o in space.objectives],
        sampler=make_sampler(space.budget, bool(space.constraints)), study_name=space.name,
        storage=optuna.storages.RDBStorage(storage_url),
        points_to_evaluate=[dict(p) for p in space.initial_points] or None,
        constraint_names=[c.text for c in space.constraints])
    return ConcurrencyLimiter(searcher, max_concurrent=space.budget.max_concurrent_trials)
