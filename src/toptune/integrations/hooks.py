"""Project hooks: MLflow tags on every run, the kept epoch on a training run (the model bundle records
its training run's id)."""

from __future__ import annotations

import subprocess

import mlflow
from kedro.framework.hooks import hook_impl


def git_commit() -> str:
    """The checkout's commit (with ``-dirty`` when it has uncommitted changes), or ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_tags(pipeline_name: str | None) -> dict[str, str]:
    """Tags of a run: pipeline, git commit, library versions, device."""
    # heavy: ~3 s of imports; Kedro loads the hooks on every command, a run needs them only when it starts
    import peft
    import torch
    import transformers

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "pipeline": pipeline_name or "__default__",
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "peft_version": peft.__version__,
        "device": device,
    }


def prefix_mode_tags(summary: dict) -> dict[str, str]:
    """Tags saying which prefix mode the run trained in (``auto`` resolved) and, for ``auto``, why."""
    tags = {"prefix_mode": str(summary.get("prefix_mode", ""))}
    if "prefix_mode_reason" in summary:
        tags["prefix_mode_reason"] = str(summary["prefix_mode_reason"])[:5000]
    return tags


def best_epoch_tags(best: dict | None) -> dict[str, str]:
    """Tags saying which epoch's adapter the run kept and why (``best.epoch``, ``best.metric``, …)."""
    if not best:
        return {}
    return {
        "best.epoch": str(best["epoch"]),
        "best.metric": f"val.{best['metric']}",
        "best.value": str(best["value"]),
        "best.epochs_run": str(best["epochs_run"]),
        "best.stopped_early": str(best["stopped_early"]).lower(),
        "best.reason": best["reason"],
    }


class ToptuneHooks:
    """Tags the active MLflow run (opened by kedro-mlflow)."""

    def __init__(self) -> None:
        self._pipeline_name: str | None = None
        self._tagged = False

    @hook_impl
    def before_pipeline_run(self, run_params: dict) -> None:
        names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        self._pipeline_name = "+".join(names)
        self._tagged = False

    @hook_impl
    def before_node_run(self) -> None:
        # kedro-mlflow opens its run in its own before_pipeline_run; by the first node it is active.
        if not self._tagged and mlflow.active_run() is not None:
            mlflow.set_tags(run_tags(self._pipeline_name))
            self._tagged = True

    @hook_impl
    def after_node_run(self, node, outputs: dict) -> None:
        if node.name == "build_prefix_cache" and mlflow.active_run() is not None:
            mlflow.set_tags(prefix_mode_tags(outputs.get("prefix_cache") or {}))
        if node.name == "train_model" and mlflow.active_run() is not None:
            mlflow.set_tags(best_epoch_tags((outputs.get("train_summary") or {}).get("best")))
