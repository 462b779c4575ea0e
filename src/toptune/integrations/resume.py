"""kedro-mlflow, continued: a training run resumed from a checkpoint logs into the checkpoint's MLflow run.

:class:`ResumableMlflowHook` is kedro-mlflow's own hook (settings.py registers it in place of the
plugin's, on rank 0 only) with three additions:

- before the run starts, when the pipeline trains and ``training.resume`` is not ``never``, it picks
  the checkpoint the training will continue, by the fingerprint fields known before the data is
  (parameters, model, processes, device) and the raw table's identity (tagged on every run as
  ``toptune.raw_data``), and has kedro-mlflow reopen that checkpoint's run instead of starting one.
  Under ``auto`` it only reopens a run that did not finish (a job that died), and says why it passes
  over the others; a checkpoint given as a path that was made for another configuration is refused
  in one line before anything runs;
- in a reopened run, a parameter whose value changed (``training.resume`` itself, say) cannot be
  logged again (MLflow parameters are immutable): the new value goes to the tag ``resumed.<name>``;
- every metrics-history dataset logs a (key, step) point only if the run does not hold it yet: the
  data nodes log their step-0 metrics again on every run, and the training history again from its
  start (the checkpoint carries it), so a continued run still holds each point once.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Literal

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.io import DatasetError
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook
from kedro_mlflow.io.metrics import MlflowMetricsHistoryDataset
from mlflow.entities import Metric, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from toptune.config import RunConfig
from toptune.integrations.guards import RUN_CONFIG
from toptune.io.hashing import path_sha256
from toptune.train import distributed
from toptune.train.checkpoint.fingerprint import fingerprint
from toptune.train.checkpoint.resume import CHECKPOINT_DIR, Checkpoint, select
from toptune.train.device import resolve_device

log = logging.getLogger(__name__)

RAW_DATA_TAG = "toptune.raw_data"
"""Run tag: the identity of the raw table the run read (sha256 of its file(s), else the dataset's description)."""
TRAIN_NODE = "train_model"


class MlflowMetricsHistoryOnceDataset(MlflowMetricsHistoryDataset):
    """kedro-mlflow's metrics history, skipping the (key, step) points the run already holds."""

    def _save(self, data: dict) -> None:
        try:
            run_id = self.run_id
        except DatasetError:
            return super()._save(data)
        if not self._logging_activated:
            return None
        client = MlflowClient()
        points = list(chain.from_iterable(self._build_args_list_from_metric_item(k, v) for k, v in data.items()))
        held = {key: {m.step for m in client.get_metric_history(run_id, key)} for key in {p[0] for p in points}}
        now = int(time.time() * 1000)
        fresh = [Metric(key, float(value), now, int(step)) for key, value, step in points if step not in held[key]]
        for i in range(0, len(fresh), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(run_id, metrics=fresh[i : i + 1000])
        return None


def raw_identity(catalog) -> str:
    """The raw table's identity: sha256 of ``raw_data``'s local file(s), else its dataset description."""
    try:
        dataset = catalog.get("raw_data")
    except (DatasetError, KeyError):
        return "no raw_data"
    path = getattr(dataset, "_filepath", None)
    if path is not None and getattr(dataset, "_protocol", "file") in ("file", None) and Path(str(path)).exists():
        return "sha256 " + path_sha256(Path(str(path)))
    return "dataset " + json.dumps(dataset._describe(), sort_keys=True, default=str)


class ResumableMlflowHook(MlflowHook):
    """kedro-mlflow's hook that continues the MLflow run of the checkpoint a training run resumes."""

    def __init__(self) -> None:
        super().__init__()
        self._held_params: dict[str, str] | None = None
        """The reopened run's parameters (None: the run is new)."""
        self._raw = "no raw_data"
        """The raw table's identity, taken when the catalog is made (later hooks may swap the dataset)."""

    @hook_impl
    def after_catalog_created(self, catalog, conf_catalog, conf_creds, parameters, save_version, load_versions) -> None:
        super().after_catalog_created(catalog, conf_catalog, conf_creds, parameters, save_version, load_versions)
        self._raw = raw_identity(catalog)
        for name, dataset in list(catalog.items()):
            if type(dataset) is MlflowMetricsHistoryDataset:
                catalog[name] = MlflowMetricsHistoryOnceDataset(
                    run_id=dataset._run_id, prefix=dataset._prefix, metadata=dataset.metadata
                )

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        self._held_params = None
        raw = self._raw
        run_id = self._run_to_continue(pipeline, catalog, raw) if self.mlflow_config.tracking.run.id is None else None
        if run_id is not None:
            self.mlflow_config.tracking.run.id = run_id
            self._held_params = dict(MlflowClient().get_run(run_id).data.params)
        super().before_pipeline_run(run_params, pipeline, catalog)
        if run_id is not None:
            self.mlflow_config.tracking.run.id = None  # the hook object outlives this run (sessions in one process)
        if self.run_id is not None and mlflow.active_run() is not None:
            mlflow.set_tag(RAW_DATA_TAG, raw)

    def _log_param(self, name: str, value) -> None:
        held = (self._held_params or {}).get(name)
        new = str(value)[:MAX_PARAM_VAL_LENGTH]
        if held is not None and held != new:
            log.info("parameter %s was %r in the continued MLflow run; now %r (tag resumed.%s)", name, held, new, name)
            mlflow.set_tag(f"resumed.{name}", new)
            return None
        return super()._log_param(name, value)

    def _run_to_continue(self, pipeline, catalog, raw: str) -> str | None:
        """The MLflow run of the checkpoint this run will continue, if any (see the module docstring)."""
        if TRAIN_NODE not in {n.name for n in pipeline.nodes}:
            return None
        cfg: RunConfig = catalog.load(RUN_CONFIG)  # parsed by GuardHooks, before this hook runs
        resume, given = cfg.training.resume, cfg.training.resume not in ("auto", "never")
        fp = fingerprint(cfg, distributed.world(), resolve_device(cfg.training.device).type)

        def run_reasons(ck: Checkpoint) -> list[str]:
            """A given checkpoint is refused only for a changed raw table (its run gone: a new run continues it)."""
            why = run_refusal(ck.meta.get("run_id"), raw, finished_ok=given)
            return [why.text] if why is not None and (not given or why.kind == "raw_data") else []

        chosen = select(CHECKPOINT_DIR, fp, resume, skip=("data",), also=run_reasons)
        for skipped, why in chosen.skipped:
            log.info("checkpoint %s: its MLflow run is not continued: %s", skipped.path, why)
        ck = chosen.get()
        if ck is None:
            return None
        gone = run_refusal(ck.meta.get("run_id"), raw, finished_ok=True) if given else None
        if gone is not None:
            log.info("checkpoint %s: %s; this run is a new one", ck.path, gone.text)
            return None
        if not given:
            log.info(
                "continuing MLflow run %s: it made checkpoint %s (epoch %d, step %d)",
                ck.meta["run_id"],
                ck.path,
                ck.meta["epoch"],
                ck.step,
            )
        return ck.meta.get("run_id")


@dataclass(frozen=True)
class RunRefusal:
    """Why an MLflow run cannot be continued."""

    kind: Literal["no_run", "not_in_store", "deleted", "finished", "raw_data"]
    text: str


def run_refusal(run_id: str | None, raw: str, finished_ok: bool = False) -> RunRefusal | None:
    """Why the MLflow run ``run_id`` cannot be continued by a run reading raw table ``raw`` (None: it can)."""
    if run_id is None:
        return RunRefusal("no_run", "no MLflow run beside it")
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        return RunRefusal("not_in_store", f"its MLflow run {run_id} is not in this tracking store")
    if run.info.lifecycle_stage != "active":
        return RunRefusal("deleted", f"its MLflow run {run_id} is deleted")
    if not finished_ok and run.info.status == RunStatus.to_string(RunStatus.FINISHED):
        return RunRefusal("finished", f"its MLflow run {run_id} finished")
    if run.data.tags.get(RAW_DATA_TAG) != raw:
        return RunRefusal(
            "raw_data", f"raw data changed ({run.data.tags.get(RAW_DATA_TAG, 'unknown')[:19]} → {raw[:19]})"
        )
    return None
