"""``kedro run --pipeline probe`` in a real Kedro session on a fresh project: the data step, then the probe, into
probe.json, probe.png and its own MLflow run."""

from __future__ import annotations

import json

import mlflow
import pytest

from support.project import make_project, run

pytestmark = pytest.mark.slow  # a real Kedro session


def test_probe_pipeline_writes_its_report_plot_and_mlflow_run(tmp_path, monkeypatch, tiny_qwen3, small_spec):
    monkeypatch.chdir(tmp_path)
    project = make_project(tmp_path)  # no token store yet: the pipeline prepares the data itself
    params = {"data.sample_rows": 150, "model.name_or_path": str(tiny_qwen3), "training.progress": False}
    run(project, {**params, "probe.max_rows": 40, "probe.max_iter": 50}, "probe")

    report = json.loads((project / "data/08_reporting/probe.json").read_text())
    blocks = small_spec["num_layers"]
    assert [row["block"] for row in report["layers"]] == list(range(blocks))
    assert {row["metric"] for row in report["layers"]} == {"macro_f1"}
    k = report["recommended_trainable_layers"]
    assert 1 <= k < blocks and k == blocks - 1 - report["saturation_block"] and "K = max(1" in report["rule"]
    assert report["rows"]["train"] == 40 and 0 < report["rows"]["val"] <= 40
    assert (project / "data/08_reporting/probe.png").read_bytes()[:4] == b"\x89PNG"

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("toptune")
    (r,) = mlflow.search_runs([exp.experiment_id], output_format="list")
    assert r.info.status == "FINISHED" and r.data.tags["pipeline"] == "probe"
    assert r.data.metrics["probe.recommended_trainable_layers"] == k and "data.rows_valid" in r.data.metrics
    client = mlflow.MlflowClient()
    history = client.get_metric_history(r.info.run_id, "probe.macro_f1")
    assert sorted((m.step, m.value) for m in history) == [(row["block"], row["value"]) for row in report["layers"]]
    assert {a.path for a in client.list_artifacts(r.info.run_id, "probe")} == {"probe/probe.json", "probe/probe.png"}
