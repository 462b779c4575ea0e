"""The study of ``kedro run --pipeline sweep``: Optuna trials of the training run on one prefix cache.

Each trial draws its parameters (:mod:`toptune.sweep.space`), builds the classifier, trains it on the
cache built once at the deepest K of the space (a trial of fewer blocks runs the blocks between frozen),
reports its validation metric after every epoch to the pruner, and is scored by its kept epoch. The
trainable weights and task of the best complete trial are kept in ``keep_dir`` (over invocations: a sweep
started again continues the study and may keep an earlier invocation's trial). Several machines on one storage
each keep their own best; one whose best trial ran elsewhere trains that trial again from its parameters,
on its own cache, so that every machine ends with the study's best model. Tracking is the caller's:
``tracker`` opens a record per trial (an MLflow child run in the pipeline).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
import torch
from safetensors.torch import load_file, save_file

from toptune.cache import fit_cached, prepare_cache
from toptune.config import RunConfig, SweepConfig
from toptune.data.tokens import Encoded
from toptune.io.atomic import staging_dir, swap_dir
from toptune.sweep.space import apply, deepest_block, suggest
from toptune.task import LOWER_IS_BETTER, Task
from toptune.train.objective import Objective
from toptune.train.recipe import Classifier, build_classifier, task_classifier

log = logging.getLogger(__name__)

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
"""Trial states that count toward ``sweep.trials``."""
Tracker = Callable[[int, dict[str, Any]], contextlib.AbstractContextManager[Callable[[str, Any, int | None], None]]]
"""``tracker(number, params)`` opens a trial's record and yields ``log(name, value, step)``."""


@dataclass
class SweepResult:
    """What ``sweep.json`` holds, and the best trial's classifier (None when no trial completed)."""

    trials: list[dict]
    """Every trial of the study: ``number``, ``params``, ``value``, ``state``, ``seconds``."""
    best: dict | None
    direction: str
    cache_builds: int
    """Prefix caches this invocation built (1 for a new sweep, 0 for one continued on its cache)."""
    study: str
    storage: str
    retrained: float | None = None
    """The best trial's value when trained again here, its weights being elsewhere (another machine's
    ``keep_dir``); None when its kept weights were loaded."""
    classifier: Classifier | None = field(default=None, repr=False)

    def report(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "classifier"}


def run_sweep(
    cfg: RunConfig,
    data: dict[str, Encoded],
    id2label: dict[int, str],
    storage: str,
    keep_dir: Path,
    tracker: Tracker,
) -> SweepResult:
    """Run the trials ``cfg.sweep`` still misses (``sweep.trials`` counts every complete or pruned trial of
    the study), each on the one prefix cache; returns every trial, the best, and its classifier."""
    sweep = cfg.sweep
    metric = sweep_metric(cfg)
    direction: Literal["minimize", "maximize"] = "minimize" if metric in LOWER_IS_BETTER else "maximize"
    study = optuna.create_study(
        study_name=sweep.study,
        storage=storage,
        direction=direction,
        sampler=sampler(sweep, cfg.training.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2) if sweep.prune else optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    builds: list[int] = []
    objective = _objective(cfg, sweep, metric, data, id2label, keep_dir, tracker, builds, study)
    missing = sweep.trials - len(study.get_trials(deepcopy=False, states=FINISHED))
    log.info(
        "sweep %r: %d trial(s) to run of %d (%s, %s val_%s)",
        sweep.study,
        max(missing, 0),
        sweep.trials,
        storage,
        direction,
        metric,
    )
    if missing > 0:
        study.optimize(objective, n_trials=missing, callbacks=[optuna.study.MaxTrialsCallback(sweep.trials, FINISHED)])
    trials = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
    done = [t for t in trials if t["state"] == "COMPLETE"]
    best = study.best_trial if done else None
    clf, retrained = None, None
    if best is not None:
        clf = _kept_classifier(cfg, best, data, id2label, keep_dir)
        if clf is None:  # the best trial ran on another machine (or its weights were removed): train it here
            log.warning(
                "sweep: the best trial %d's weights are not in %s (it ran elsewhere): training it again here",
                best.number,
                keep_dir,
            )
            clf, retrained, built = train_trial(cfg, dict(best.params), data, id2label)
            builds.append(int(built))
            _keep(clf, best.number, dict(best.params), retrained, keep_dir)
    return SweepResult(
        trials,
        _trial_row(best) if best is not None else None,
        direction,
        sum(builds),
        sweep.study,
        storage,
        retrained,
        clf,
    )


def sampler(sweep: SweepConfig, seed: int) -> optuna.samplers.BaseSampler:
    """TPE, or the grid of every ``choices`` combination (checked when parsed: all dimensions are choices)."""
    if sweep.sampler == "grid":
        return optuna.samplers.GridSampler({name: list(spec["choices"]) for name, spec in sweep.space.items()}, seed)
    return optuna.samplers.TPESampler(seed=seed)


def sweep_metric(cfg: RunConfig) -> str:
    """The validation metric trials are scored by: ``sweep.metric``, else ``training.metric_for_best``."""
    return cfg.sweep.metric or str(cfg.training.metric_for_best)


def train_trial(
    cfg: RunConfig,
    params: dict[str, Any],
    data: dict[str, Encoded],
    id2label: dict[int, str],
    on_epoch: Callable[[int, dict], None] | None = None,
) -> tuple[Classifier, float, bool]:
    """One trial's run: ``params`` applied to ``cfg``, trained on the prefix cache at the deepest K of
    ``cfg.sweep.space``. Returns the classifier, its value (the sweep's metric at the kept epoch) and whether
    the cache was built for it."""
    run = apply(cfg, params)
    clf = task_classifier(run, data, id2label)
    training = dataclasses.replace(run.training, prefix_mode="cache", resume="never")
    cache = prepare_cache(clf, data, training, block=deepest_block(cfg.sweep.space, cfg, clf.num_layers))
    result = fit_cached(
        clf, data, training, cache=cache, objective=Objective(clf.task, training.regression_loss), on_epoch=on_epoch
    )
    kept = result.best["epoch"] if result.best is not None else len(result.epochs) - 1
    value = float(next(e[f"val_{sweep_metric(cfg)}"] for e in result.epochs if e["epoch"] == kept))
    return clf, value, cache.status == "built"


def _objective(cfg, sweep: SweepConfig, metric, data, id2label, keep_dir: Path, tracker, builds, study):
    """Optuna's objective: one trial trained on the cache, reported per epoch, kept when it is the best."""

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, sweep.space)
        t0 = time.perf_counter()
        with tracker(trial.number, params) as track:

            def on_epoch(epoch: int, row: dict) -> None:
                for k, v in row.items():
                    if isinstance(v, int | float) and k != "epoch":
                        track(k, float(v), epoch)
                trial.report(float(row[f"val_{metric}"]), epoch)
                if trial.should_prune():
                    track("pruned_at_epoch", float(epoch), None)
                    raise optuna.TrialPruned(f"trial {trial.number} pruned after epoch {epoch}")

            clf, value, built = train_trial(cfg, params, data, id2label, on_epoch)
            builds.append(int(built))
            track("value", value, None)
            track("seconds", time.perf_counter() - t0, None)
            if _is_best(study, value):
                _keep(clf, trial.number, params, value, keep_dir)
            return value

    return objective


def _is_best(study: optuna.Study, value: float) -> bool:
    """Whether ``value`` beats every complete trial of the study so far (this one is not complete yet)."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        return True
    best = study.best_value
    return value < best if study.direction == optuna.study.StudyDirection.MINIMIZE else value > best


def _keep(clf: Classifier, number: int, params: dict, value: float, keep_dir: Path) -> None:
    """The trial's trainable weights, task and parameters into ``keep_dir``, whole or not at all."""
    staged = staging_dir(keep_dir)
    staged.mkdir(parents=True)
    weights = {n: p.detach().cpu().contiguous() for n, p in clf.model.named_parameters() if p.requires_grad}
    save_file(weights, staged / "trainable.safetensors")
    meta = {"trial": number, "params": params, "value": value, "task": clf.task.to_dict()}
    (staged / "trial.json").write_text(json.dumps(meta, indent=1))
    swap_dir(staged, keep_dir)
    log.info("sweep: trial %d is the best so far (%.4f): kept in %s", number, value, keep_dir)


def _kept_classifier(cfg: RunConfig, best, data, id2label, keep_dir: Path) -> Classifier | None:
    """The best trial's classifier rebuilt from ``keep_dir`` (None when another trial, or none, is kept there)."""
    try:
        meta = json.loads((keep_dir / "trial.json").read_text())
    except OSError:
        meta = {}
    if meta.get("trial") != best.number:
        return None
    run = apply(cfg, meta["params"])
    clf = build_classifier(
        run.model, run.lora, id2label, run.training.seed, run.training.device, problem_type=run.data.problem_type
    )
    weights = load_file(keep_dir / "trainable.safetensors", device=str(clf.device))
    missing = set(weights) - {n for n, _ in clf.model.named_parameters()}
    if missing:
        raise ValueError(f"{keep_dir}: weights {sorted(missing)[:3]} are not the model's")
    with torch.no_grad():
        for n, p in clf.model.named_parameters():
            if n in weights:
                p.copy_(weights[n])
    clf.task = Task.from_dict(meta["task"])
    return clf


def _trial_row(t: optuna.trial.FrozenTrial) -> dict:
    seconds = (
        (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
    )
    return {"number": t.number, "params": dict(t.params), "value": t.value, "state": t.state.name, "seconds": seconds}
