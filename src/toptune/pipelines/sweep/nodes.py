"""Nodes of the ``sweep`` pipeline: the study (an MLflow child run per trial), then the best trial's bundle."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path

import mlflow
import optuna
from matplotlib.figure import Figure

from toptune.config import DataConfig, LoraSettings, ModelConfig, RunConfig, SweepConfig, TrainingConfig
from toptune.data.tokens import Encoded
from toptune.pipelines.train.nodes import bundle_model
from toptune.pipelines.utils import id2label_from_json
from toptune.sweep import run_sweep
from toptune.sweep.study import sweep_metric
from toptune.train.objective import calibrate
from toptune.train.recipe import Classifier, predict

log = logging.getLogger(__name__)

SWEEP_DIR = Path("data/06_models/sweep")
"""The default storage's sqlite file and each study's kept best trial."""


def sweep_trials(
    tokenised: dict[str, Encoded],
    label_map: dict[str, str],
    data: DataConfig,
    model: ModelConfig,
    lora: LoraSettings,
    training: TrainingConfig,
    sweep: SweepConfig,
) -> tuple[Classifier | None, dict, dict[str, Figure]]:
    """Run the study's missing trials; the best trial's classifier (calibrated), ``sweep.json`` and Optuna's
    plots (history, parameter importances)."""
    cfg = RunConfig(data=data, model=model, lora=lora, training=training, sweep=sweep)
    SWEEP_DIR.mkdir(parents=True, exist_ok=True)
    storage = sweep.storage or f"sqlite:///{SWEEP_DIR / 'optuna.db'}"
    result = run_sweep(cfg, tokenised, id2label_from_json(label_map), storage, SWEEP_DIR / sweep.study, trial_run)
    for t in result.trials:
        log.info("sweep | trial %3d %-8s %s %s", t["number"], t["state"], t["value"], t["params"])
    clf, best = result.classifier, result.best
    if clf is not None and best is not None:
        clf.task, _ = calibrate(clf.task, predict(clf, tokenised["val"], training.eval_batch_size), training)
        log.info("sweep: best trial %d, val %s %.4f", best["number"], sweep_metric(cfg), best["value"])
    study = optuna.load_study(study_name=sweep.study, storage=storage)
    return clf, result.report(), study_plots(study)


@contextlib.contextmanager
def trial_run(number: int, params: dict):
    """One trial as an MLflow child run of the sweep's run: its parameters, per-epoch metrics, state. A pruned
    trial's run ends FINISHED, tagged ``PRUNED`` (the pruner's exception passes on after the run is closed:
    raised through ``start_run`` it would mark the run FAILED)."""
    pruned: optuna.TrialPruned | None = None
    with mlflow.start_run(run_name=f"trial {number}", nested=True):
        mlflow.log_params(params)
        mlflow.set_tag("sweep.trial", str(number))
        try:
            yield lambda name, value, step: mlflow.log_metric(name, value, step=step)
            mlflow.set_tag("sweep.state", "COMPLETE")
        except optuna.TrialPruned as e:
            mlflow.set_tag("sweep.state", "PRUNED")
            pruned = e
    if pruned is not None:
        raise pruned


def study_plots(study: optuna.Study) -> dict[str, Figure]:
    """Optuna's matplotlib plots of the study: the optimisation history, and the parameter importances once
    two trials are complete."""
    from optuna.visualization import matplotlib as plots

    out: dict[str, Figure] = {"history": plots.plot_optimization_history(study).get_figure()}  # type: ignore[dict-item]
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) >= 2 and len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
        out["importances"] = plots.plot_param_importances(study).get_figure()  # type: ignore[assignment]
    return out


def bundle_best(
    classifier: Classifier | None,
    input_example: list[dict],
    data: DataConfig,
    model: ModelConfig,
    training: TrainingConfig,
    sweep_report: dict,
) -> dict:
    """The best trial's adapter bundle, its ``toptune.json`` naming the sweep (study, storage, trial, value)."""
    if classifier is None:
        raise RuntimeError(f"sweep {sweep_report['study']!r}: no trial completed, so there is no model to keep")
    best = sweep_report["best"]
    trained = dataclasses.replace(
        model, **{k.split(".", 1)[1]: v for k, v in best["params"].items() if k.startswith("model.")}
    )
    out = bundle_model(classifier, input_example, data, trained, training)
    out["bundle"].extra["sweep"] = {k: sweep_report[k] for k in ("study", "storage", "direction", "retrained")} | {
        "trial": best["number"],
        "value": best["value"],
        "params": best["params"],
    }
    return out
