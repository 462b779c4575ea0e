"""Project hooks that keep bad input from doing work, and faults from leaving a mix or debris behind.

Before any node runs (and before kedro-mlflow opens its run): the parameters are parsed, once, into typed
configs (:func:`toptune.config.parse_params`: every group, key, type and range; the first bad one fails in
one line), the project lock is taken (one run at a time; only rank 0 of a ``torchrun`` job), debris of dead
processes is cleared, the model's source and ``model.trainable_layers`` are checked against the
checkpoint's ``config.json``, and, when the pipeline prepares the raw table, its columns are checked (the
table is loaded once: the node gets the same object).

Each node then gets the typed config of every ``params:<group>`` input it names (``before_node_run`` may
return inputs that replace the loaded ones: Kedro's own way to hand a node other inputs), so nodes never
parse; the other hooks read the same :class:`toptune.config.RunConfig` from the catalog (``RUN_CONFIG``).
kedro-mlflow still logs the parameters as Kedro loaded them (it sees the inputs before the replacement).

Once kedro-mlflow's run is open it is tagged with this host, pid and project, and MLflow runs of this
project whose process is gone are marked KILLED. After nodes, health warnings are logged and set as
``warning.<name>`` tags. The adapter bundle a run staged becomes current only when the run succeeds.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import mlflow
from kedro.config import MissingConfigException
from kedro.framework.context import KedroContext
from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset

from toptune.config import DataConfig, RunConfig, parse_params
from toptune.data.read import column_kinds
from toptune.data.table import check_columns, check_text_columns
from toptune.evaluate.health import dropped_rows_warnings, short_text_warnings, training_warnings
from toptune.integrations.datasets import commit_pending, discard_pending
from toptune.io.debris import clear_debris, hostname, pid_alive
from toptune.io.lock import ProjectLock, takes_lock
from toptune.model.preflight import check_model
from toptune.train import distributed

log = logging.getLogger(__name__)

RUN_CONFIG = "run_config"
"""The catalog entry (in memory) holding this run's parsed :class:`toptune.config.RunConfig`."""
DEBRIS_DIRS = ("data/04_feature", "data/06_models")
"""Where runs stage bundles and tokenised splits (besides ``training.cache_dir``'s parent)."""
TAG_HOST, TAG_PID, TAG_PROJECT = "toptune.host", "toptune.pid", "toptune.project"


def node_inputs(pipeline) -> set[str]:
    return {name for node in pipeline.nodes for name in node.inputs}


def preflight_table(catalog, cfg: DataConfig) -> None:
    """Check the raw table's columns (the template's and the label's, and that the template's hold text)
    before any node runs, from its schema: a file is opened, not read. The node then reuses the loaded
    table (one load, not two). Cells and split sizes are checked as the data node streams the rows."""
    raw = catalog.load("raw_data")
    kinds = column_kinds(raw)
    check_columns(list(kinds), cfg)
    check_text_columns(kinds, cfg)
    quiet = logging.getLogger("kedro.io.data_catalog")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its "Replacing dataset" warning is expected here
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


class ToptuneContext(KedroContext):
    """Kedro's context, with the parameters handed on as configured (settings' ``CONTEXT_CLASS``).

    Kedro 1.7 itself instantiates a node's ``params:`` input whose annotation is a dataclass; then
    kedro-mlflow would log ``training`` as one string (not ``training.lr``, …) and a bad value would fail
    in Kedro's multi-line report. toptune parses them itself, once (:class:`GuardHooks`)."""

    @property
    def params(self) -> dict[str, Any]:
        try:
            return self.config_loader["parameters"]  # the configuration with --params merged in
        except MissingConfigException:
            return self._runtime_params or {}


class GuardHooks:
    """Checks before work, the project lock, run tags, health warnings and the bundle's commit."""

    def __init__(self) -> None:
        self._lock: ProjectLock | None = None

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        cfg = parse_params(catalog.load("parameters"))
        catalog[RUN_CONFIG] = MemoryDataset(cfg, copy_mode="assign")
        if distributed.world() > 1:  # the global batch must split over the processes: say so before any work
            distributed.check_divides(cfg.training.batch_size)
        project = Path(run_params["project_path"])
        if takes_lock():
            self._lock = ProjectLock(project)
            self._lock.acquire("kedro run --pipelines " + ",".join(run_params.get("pipeline_names") or ["__default__"]))
        try:
            for parent in {project / d for d in DEBRIS_DIRS} | {(project / cfg.training.cache_dir).parent}:
                for line in clear_debris(parent, own_pid=os.getpid()) if takes_lock() else []:
                    log.info("debris of a dead run: %s", line)
            used = node_inputs(pipeline)
            if "params:model" in used:
                check_model(cfg.model)
            if {"raw_data", "params:data"} <= used and "prepare_data" in {n.name for n in pipeline.nodes}:
                preflight_table(catalog, cfg.data)
        except Exception:
            self._release()
            raise

    @hook_impl
    def before_node_run(self, node, catalog) -> dict | None:
        """The node's ``params:<group>`` inputs as this run's typed configs (``params:training`` → its
        :class:`toptune.config.TrainingConfig`)."""
        groups = [name for name in node.inputs if name.startswith("params:")]
        if not groups:
            return None
        cfg: RunConfig = catalog.load(RUN_CONFIG)
        return {name: getattr(cfg, name.removeprefix("params:")) for name in groups}

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
        if node.name == "prepare_data":
            data, max_length = inputs["params:data"], inputs["params:training"].max_length  # typed configs
            splits = outputs["tokenised"].entries
            sizes = {name: (e["rows"], e["truncated"]) for name, e in splits.items()}
            warnings = short_text_warnings(sizes, max_length, data.min_text_tokens, data.short_text_share)
            warnings.update(dropped_rows_warnings(outputs["tokenised"].quality))
        elif node.name == "train_model":
            val_labels, classes = inputs["tokenised"]["val"].labels, len(inputs["label_map"])
            warnings = training_warnings(outputs["train_summary"], val_labels, classes)
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
