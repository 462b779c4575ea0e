"""A real Kedro session runs the default pipeline on a small slice into a real sqlite MLflow store."""

from __future__ import annotations

import json
import os

import mlflow
import pandas as pd
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from support.project import make_project, run

pytestmark = pytest.mark.slow  # real Kedro sessions, each a whole pipeline

QUICK = {"data.sample_rows": 240, "training.epochs": 1, "training.progress": False}


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return make_project(tmp_path)


def test_default_pipeline_end_to_end(project, tiny_qwen3):
    run(project, {**QUICK, "model.name_or_path": str(tiny_qwen3)})
    metrics = json.loads((project / "data/08_reporting/metrics.json").read_text())
    assert {"accuracy", "macro_f1", "per_class"} <= metrics.keys() and metrics["n_examples"] > 0
    assert (project / "data/06_models/adapter/adapter_model.safetensors").is_file()
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("toptune")
    (r,) = mlflow.search_runs([exp.experiment_id], output_format="list")
    assert r.info.status == "FINISHED"
    assert r.data.params["training.epochs"] == "1" and r.data.params["data.label_column"] == "sentiment"
    assert {
        "test.accuracy",
        "test.macro_f1",
        "val.accuracy",
        "data.rows_valid",
        "data.dropped_duplicates",
        "model.trainable_params",
    } <= r.data.metrics.keys()
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(r.info.run_id, "train.loss")) >= 1
    assert r.data.tags["pipeline"] == "__default__" and r.data.tags["torch_version"].startswith("2.13")
    # training.prefix_mode: auto (the default) says what it chose and why, with both measured rates.
    assert r.data.params["training.prefix_mode"] == "auto" and r.data.tags["prefix_mode"] == "no_grad"
    assert r.data.tags["prefix_mode_reason"].startswith("1 epoch") and "tokens/s" in r.data.tags["prefix_mode_reason"]
    assert r.data.metrics["cache.compute_tokens_per_second"] > 0 and r.data.metrics["cache.used"] == 0
    # The kept epoch (one here) and why, in the run and in train_summary.json.
    summary = json.loads((project / "data/08_reporting/train_summary.json").read_text())
    assert {"val.macro_f1", "val.best_macro_f1"} <= r.data.metrics.keys()
    assert (
        r.data.tags["best.epoch"] == str(summary["best"]["epoch"]) == "0"
        and r.data.tags["best.metric"] == "val.macro_f1"
    )
    assert (
        r.data.tags["best.reason"] == summary["best"]["reason"] and "highest val macro_f1" in summary["best"]["reason"]
    )
    arts = {a.path for a in client.list_artifacts(r.info.run_id)} | {
        a.path for a in client.list_artifacts(r.info.run_id, "adapter")
    }
    assert "adapter/adapter_model.safetensors" in arts and "adapter/adapter_config.json" in arts
    plots = {a.path for a in client.list_artifacts(r.info.run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/reliability.png", "plots/training_curves.png"}
    bundle = json.loads((project / "data/06_models/adapter/toptune.json").read_text())
    assert bundle["mlflow_run_id"] == r.info.run_id and bundle["id2label"] == {
        "0": "negative",
        "1": "neutral",
        "2": "positive",
    }
    assert r.data.tags["toptune.pid"] == str(os.getpid()) and r.data.metrics["data.dropped_sample_rows"] > 0

    # `inspect` on the same model, data and parameters: its own MLflow run, the report and its PNGs.
    run(
        project,
        {**QUICK, "model.name_or_path": str(tiny_qwen3), "inspect.modes": ["lora_all", "topk_no_grad"]},
        "inspect",
    )
    report = json.loads((project / "data/08_reporting/memory_report.json").read_text())
    assert report["seed_table"]["C"]["nodes"] and set(report["modes"]) == {"lora_all", "topk_no_grad"}
    assert report["modes"]["topk_no_grad"]["saved_bytes_by_block"]["layer.0"] == 0
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    inspect_run = next(x for x in runs if x.data.tags.get("pipeline") == "inspect")
    assert "inspect.topk_no_grad.saved_bytes" in inspect_run.data.metrics
    assert {a.path for a in client.list_artifacts(inspect_run.info.run_id, "inspect")} == {
        "inspect/memory_report.json",
        "inspect/memory_by_block.png",
        "inspect/model_blocks.png",
    }

    # export then predict, as a user would after training.
    for name in ("export", "predict"):
        run(project, {**QUICK, "model.name_or_path": str(tiny_qwen3)}, name)
    preds = pd.read_csv(project / "data/07_model_output/predictions.csv")
    assert len(preds) == len(pd.read_csv(project / "data/01_raw/reviews.csv"))
    assert {"id", "label", "prob_negative", "prob_neutral", "prob_positive"} <= set(preds.columns)
    assert "model/MLmodel" in {a.path for a in client.list_artifacts(r.info.run_id, "model")}


def test_local_parameters_override_only_their_keys(project):
    (project / "conf/local/parameters.yml").write_text('data:\n  text_template: "{review}"\n  label_column: mood\n')
    bootstrap_project(project)
    with KedroSession.create(project_path=project) as session:
        params = session.load_context().params
    assert params["data"]["text_template"] == "{review}" and params["data"]["label_column"] == "mood"
    assert params["data"]["val_fraction"] == 0.1 and params["training"]["epochs"] == 6 and params["lora"]["r"] == 8


def test_broken_table_fails_naming_the_column(project):
    raw = project / "data/01_raw/reviews.csv"
    pd.read_csv(raw).drop(columns="sentiment").to_csv(raw, index=False)
    with pytest.raises(Exception, match=r"data.label_column='sentiment': the table has no such column"):
        run(project, QUICK)


def test_parquet_table_through_catalog_only(project, tiny_qwen3):
    pd.read_csv(project / "data/01_raw/reviews.csv").to_parquet(project / "data/01_raw/reviews.parquet")
    (project / "conf/local/catalog.yml").write_text(
        "raw_data:\n  type: pandas.ParquetDataset\n  filepath: data/01_raw/reviews.parquet\n"
    )
    run(project, {**QUICK, "model.name_or_path": str(tiny_qwen3)}, pipeline="data")
    table = pd.read_parquet(project / "data/04_feature/tokenised/texts.parquet")
    assert len(table) == 240 and table["text"].str.startswith("Product: ").all()


def test_missing_optional_fields_are_filled_and_heavy_drops_warn(project, tiny_qwen3):
    """A template over an often-empty column (tags): its rows are kept with empty tags and counted; the
    old rule (``missing_fields: drop``) drops them, and the run warns and tags itself."""
    raw = project / "data/01_raw/reviews.csv"
    df = pd.read_csv(raw).head(600)
    df["tags"] = [f"tag{i % 7}" if i % 2 else None for i in range(len(df))]  # half the rows: no tags
    df.to_csv(raw, index=False)
    params = {**QUICK, "model.name_or_path": str(tiny_qwen3), "data.text_template": "{review} | tags: {tags}"}
    run(project, params, pipeline="data")
    texts = pd.read_parquet(project / "data/04_feature/tokenised/texts.parquet")
    assert len(texts) == 240 and texts["text"].str.endswith("| tags: ").any()
    run(project, {**params, "data.missing_fields": "drop"}, pipeline="data")
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("toptune")
    filled, dropped = sorted(
        mlflow.search_runs([exp.experiment_id], output_format="list"), key=lambda r: r.info.start_time
    )
    assert (
        filled.data.metrics["data.filled_missing_tags"] == 300 and filled.data.metrics["data.dropped_empty_text"] == 0
    )
    assert "warning.rows_dropped" not in filled.data.tags
    assert dropped.data.metrics["data.dropped_empty_text"] == 300
    assert dropped.data.tags["warning.rows_dropped"].startswith("empty_text 300 (50.0%) of 600 rows")
