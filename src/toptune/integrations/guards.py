"""Project hooks that keep bad input from doing work, and faults from leaving a mix or debris behind.

Before any node runs (and before kedro-mlflow opens its run): every parameter group, key, type and
range is checked (:func:`toptune.model.preflight.check_groups`), the project lock is taken (one run at a time;
only rank 0 of a ``torchrun`` job), debris of dead processes is cleared, the model's source and
``model.trainable_layers`` are checked against the checkpoint's ``config.json``, and, when the
pipeline prepares the raw table, the table is validated and its split sizes checked (the table is
loaded once: the node gets the same object).

Once kedro-mlflow's run is open it is tagged with this host, pid and project, and MLflow runs of this
project whose process is gone are marked KILLED. After nodes, health warnings are logged and set as
``warning.<name>`` tags. The adapter bundle a run staged becomes current only when the run succeeds.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset

from toptune.config import (
    DataConfig,
    LoraSettings,
    ModelConfig,
    TrainingConfig,
    from_dict,
)
from toptune.data.table import check_split_sizes, prepare_table, to_frame
from toptune.evaluate.health import short_text_warnings, training_warnings
from toptune.inspect import InspectConfig
from toptune.integrations.datasets import commit_pending, discard_pending
from toptune.io.debris import clear_debris, hostname, pid_alive
from toptune.io.lock import ProjectLock, takes_lock
from toptune.model.preflight import check_groups, check_model
from toptune.serve.merge import ExportConfig
from toptune.serve.predict import PredictConfig

log = logging.getLogger(__name__)

PARAMETER_GROUPS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "lora": LoraSettings, "training": TrainingConfig,
    "export": ExportConfig, "predict": PredictConfig, "inspect": InspectConfig,
}
"""Every parameter group and its dataclass: a group not named here is refused (a misspelt ``trainig``)."""
DEBRIS_DIRS = ("data/04_feature", "data/06_models")
"""Where runs stage bundles and tokenised splits (besides ``training.cache_dir``'s parent)."""
TAG_HOST, TAG_PID, TAG_PROJECT = "toptune.host", "toptune.pid", "toptune.project"


def node_inputs(pipeline) -> set[str]:
    return {name for node in pipeline.nodes for name in node.inputs}


def preflight_table(catalog, cfg: DataConfig) -> None:
    """Validate the raw table and its split sizes before any node runs; the node then reuses the loaded
    table (one load, not two)."""
    raw = catalog.load("raw_data")
    table = prepare_table(to_frame(raw), cfg).table
    check_split_sizes(table["label"].value_counts().to_dict(), cfg)
    quiet = logging.getLogger("kedro.io.data_catalog")
    level, _ = quiet.level, quiet.setLevel(logging.ERROR)  # its "Replacing dataset" warning is expected here
    try:
        catalog["raw_data"] = MemoryDataset(raw, copy_mode="assign")
    finally:
        quiet.setLevel(level)


def mark_dead_runs(experiment_id: str, project: str, keep: str) -> list[str]:
    """Mark KILLED the RUNNING MLflow runs of ``project`` on this host whose process is gone."""
    client, host, killed = mlflow.MlflowClient(), hostname(), []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if run.info.run_id == keep or tags.get(TAG_HOST) != host or tags.get(TAG_PROJECT) != project:
            continue
        if TAG_PID in tags and not pid_alive(int(tags[TAG_PID])):
            client.set_terminated(run.info.run_id, "KILLED")
            killed.append(run.info.run_id)
    return killed


class GuardHooks:
    """Checks before work, the project lock, run tags, health warnings and the bundle's commit."""

    def __init__(self) -> None:
        self._lock: ProjectLock | None = None

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        configs = check_groups(catalog.load("parameters") or {}, PARAMETER_GROUPS)
        project = Path(run_params["project_path"])
        if takes_lock():
            self._lock = ProjectLock(project)
            self._lock.acquire("kedro run --pipelines " + ",".join(run_params.get("pipeline_names") or ["__default__"]))
        try:
            training = configs.get("training") or TrainingConfig()
            for parent in {project / d for d in DEBRIS_DIRS} | {(project / training.cache_dir).parent}:
                for line in clear_debris(parent, own_pid=os.getpid()) if takes_lock() else []:
                    log.info("debris of a dead run: %s", line)
            used = node_inputs(pipeline)
            if "params:model" in used:
                check_model(configs.get("model") or ModelConfig())
            if {"raw_data", "params:data"} <= used and "prepare_table" in {n.name for n in pipeline.nodes}:
                preflight_table(catalog, configs.get("data") or DataConfig())
        except Exception:
            self._release()
            raise

    @hook_impl(specname="before_pipeline_run", trylast=True)
    def tag_run(self, run_params: dict) -> None:
        """After kedro-mlflow opened the run: tag it, then close the runs of dead processes."""
        run = mlflow.active_run()
        if run is None or not takes_lock():
            return
        project = str(Path(run_params["project_path"]).resolve())
        mlflow.set_tags({TAG_HOST: hostname(), TAG_PID: str(os.getpid()), TAG_PROJECT: project})
        for run_id in mark_dead_runs(run.info.experiment_id, project, keep=run.info.run_id):
            log.warning("MLflow run %s was left RUNNING by a process that is gone: marked KILLED", run_id)

    @hook_impl
    def after_node_run(self, node, inputs: dict, outputs: dict) -> None:
        warnings = {}
        if node.name == "split_and_tokenise":
            data = from_dict(DataConfig, inputs["params:data"], "data")
            max_length = from_dict(TrainingConfig, inputs["params:training"], "training").max_length
            sizes = {name: (len(enc), enc.truncated) for name, enc in outputs["tokenised"].items()}
            warnings = short_text_warnings(sizes, max_length, data.min_text_tokens, data.short_text_share)
        elif node.name == "train_model":
            warnings = training_warnings(outputs["train_summary"], inputs["tokenised"]["val"].labels, len(inputs["label_map"]))
        for name, message in warnings.items():
            log.warning("%s", message)
            if mlflow.active_run() is not None:
                mlflow.set_tag(f"warning.{name}", message)

    @hook_impl
    def after_pipeline_run(self) -> None:
        if takes_lock():
            for path in commit_pending():
                log.info("model bundle %s is now current", path)
        else:
            discard_pending()
        self._release()

    @hook_impl
    def on_pipeline_error(self) -> None:
        discard_pending()  # the previous bundle stays current, whole
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
