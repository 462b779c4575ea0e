"""Log the merged model as an MLflow pyfunc model (MLflow layer).

MLflow 3's ``log_model`` stores a model beside the run (a "logged model", ``models:/m-…``), not among
the run's artifacts; toptune saves the pyfunc model locally and logs the folder as the artifact
``model`` of the training run, so ``runs:/<training run>/model`` is the model's URI and the run's
artifact view shows it next to the adapter and metrics. ``mlflow.transformers.log_model`` is not
used: for a PEFT model it looks the base model up on the hub.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

import toptune
from toptune.config import ExportConfig
from toptune.data.table import template_columns
from toptune.integrations import pyfunc as pyfunc_model
from toptune.serve.bundle import bundle_task, read_bundle
from toptune.serve.predict import TEXT_COLUMN, ServingConfig
from toptune.task import Task

log = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"
"""Artifact path of the pyfunc model in its run: the URI is ``runs:/<run_id>/model``."""
REQUIREMENTS = (
    "mlflow",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "pandas",
    "scikit-learn",
    "tqdm",
)


def signature(example: pd.DataFrame, serving: ServingConfig, task: Task, cfg: ExportConfig) -> ModelSignature:
    """Input: the id and template columns (types inferred from ``example``) or a ``text`` column, all
    optional since either set will do; output: ``id`` and the task's answer columns (``label`` |
    ``labels``, ``prob_<class>``; or ``prediction``); params: ``bad_rows``, ``batch_size``."""
    cols = [c for c in [serving.id_column, *template_columns(serving.text_template)] if c and c in example.columns]
    inferred = infer_signature(example[cols]).inputs.inputs if cols and len(example) else []
    inputs: list[ColSpec | TensorSpec] = [ColSpec(c.type, c.name, required=False) for c in inferred]
    if TEXT_COLUMN not in cols:
        inputs.append(ColSpec("string", TEXT_COLUMN, required=False))
    outputs: list[ColSpec | TensorSpec] = [ColSpec("string", "id")]
    outputs += [ColSpec("string" if c in ("label", "labels") else "float", c) for c in task.columns()]
    params = ParamSchema(
        [ParamSpec("bad_rows", "string", cfg.bad_rows), ParamSpec("batch_size", "long", cfg.batch_size)]
    )
    return ModelSignature(Schema(inputs), Schema(outputs), params)


def save_pyfunc(merged_dir: str | Path, example: pd.DataFrame, cfg: ExportConfig, out_dir: str | Path) -> Path:
    """Save the pyfunc model (code, merged model, signature, example, pinned requirements) to ``out_dir``."""
    bundle = read_bundle(merged_dir, "merged")
    serving = ServingConfig.of(bundle)
    sig = signature(example, serving, bundle_task(bundle), cfg)
    with tempfile.TemporaryDirectory() as tmp:
        # The package travels with the model; caches and anything but Python source stay behind.
        code = shutil.copytree(
            Path(toptune.__file__).parent, Path(tmp) / "toptune", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        mlflow.pyfunc.save_model(
            path=str(out_dir),
            python_model=pyfunc_model.__file__,
            artifacts={pyfunc_model.MERGED_ARTIFACT: str(merged_dir)},
            code_paths=[str(code)],
            model_config={"bad_rows": cfg.bad_rows, "batch_size": cfg.batch_size},
            signature=sig,
            input_example=example[[c.name for c in sig.inputs.inputs if c.name in example.columns]]
            if len(example)
            else None,
            pip_requirements=[f"{name}=={version(name)}" for name in REQUIREMENTS],
        )
    return Path(out_dir)


def known_run(run_id: str | None) -> str | None:
    """``run_id`` (the bundle's training run) if this tracking store knows it, else None."""
    if not run_id:
        return None
    try:
        mlflow.MlflowClient().get_run(run_id)
    except Exception:  # noqa: BLE001 - another store, or the run was deleted
        log.warning("training run %s (from the bundle) is not in this tracking store", run_id)
        return None
    return run_id


def log_pyfunc(merged_dir: str | Path, example: pd.DataFrame, cfg: ExportConfig, run_id: str | None) -> dict:
    """Save the pyfunc model and log it as artifact ``model`` of run ``run_id`` (None = the active run,
    or a new one); register it under ``cfg.registered_model_name`` when the store has a registry."""
    client = mlflow.MlflowClient()
    active = mlflow.active_run()
    logged_to = "training_run" if run_id else "export_run"
    own_run = None
    if run_id is None:
        run = active or mlflow.start_run(run_name="export")
        own_run = None if active else run
        run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        local = save_pyfunc(merged_dir, example, cfg, Path(tmp) / MODEL_ARTIFACT_PATH)
        client.log_artifacts(run_id, str(local), MODEL_ARTIFACT_PATH)
    uri = f"runs:/{run_id}/{MODEL_ARTIFACT_PATH}"
    info = {"model_uri": uri, "run_id": run_id, "logged_to": logged_to}
    client.set_tag(run_id, "toptune.model_uri", uri)
    if active is not None and active.info.run_id != run_id:
        client.set_tag(active.info.run_id, "toptune.model_uri", uri)
    if cfg.registered_model_name:
        try:
            mv = mlflow.register_model(uri, cfg.registered_model_name)
            info.update(registered_model=cfg.registered_model_name, version=int(mv.version))
        except Exception as e:  # noqa: BLE001 - a store without a model registry
            log.warning("pyfunc model not registered as %r: %s", cfg.registered_model_name, e)
    if own_run is not None:
        mlflow.end_run()
    log.info("pyfunc model logged: %s", info)
    return info
