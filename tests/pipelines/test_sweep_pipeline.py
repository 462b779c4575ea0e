"""``kedro run --pipeline sweep`` in a real Kedro session, sqlite Optuna storage and MLflow store: trials on
one prefix cache built once (at the deepest K of the space), a child run per trial under the sweep's run,
the best trial's bundle naming its trial, and a sweep started again continuing its study."""

from __future__ import annotations

import json

import mlflow
import pytest

from support.project import make_project, run

pytestmark = pytest.mark.slow  # real Kedro sessions

SPACE = {"training.lr": {"low": 1e-3, "high": 1e-2, "log": True}, "model.trainable_layers": {"choices": [1, 2]}}


def test_sweep_trains_on_one_cache_tracks_each_trial_and_continues(tmp_path, monkeypatch, tiny_qwen3):
    monkeypatch.chdir(tmp_path)
    project = make_project(tmp_path)
    base = {
        "data.sample_rows": 240,
        "training.epochs": 2,
        "training.progress": False,
        "model.name_or_path": str(tiny_qwen3),
        "sweep.space": SPACE,
        "sweep.prune": False,
    }
    run(project, {**base, "sweep.trials": 3}, "sweep")
    first = json.loads((project / "data/08_reporting/sweep.json").read_text())
    run(project, {**base, "sweep.trials": 4}, "sweep")
    again = json.loads((project / "data/08_reporting/sweep.json").read_text())

    assert [t["state"] for t in first["trials"]] == ["COMPLETE"] * 3 and len(again["trials"]) == 4
    assert [t["params"] for t in again["trials"][:3]] == [t["params"] for t in first["trials"]]
    assert first["cache_builds"] == 1 and again["cache_builds"] == 0  # K = 1 and 2 on the one cache of K = 2
    assert first["direction"] == "maximize" and all(t["seconds"] > 0 for t in again["trials"])
    values = {t["number"]: t["value"] for t in again["trials"]}
    assert again["best"]["number"] == max(values, key=values.get)

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("toptune").experiment_id], output_format="list")
    parents = [r for r in runs if r.data.tags.get("pipeline") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 2 and len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {p.info.run_id for p in parents}
    client = mlflow.MlflowClient()
    for c in children:
        assert c.data.tags["sweep.state"] == "COMPLETE" and "training.lr" in c.data.params
        assert len(client.get_metric_history(c.info.run_id, "val_macro_f1")) == 2  # one point per epoch

    bundle = json.loads((project / "data/06_models/adapter/toptune.json").read_text())
    best = again["best"]
    assert bundle["extra"]["sweep"]["trial"] == best["number"] and bundle["extra"]["sweep"]["study"] == "toptune"
    assert len(bundle["trainable_layers"]) == best["params"]["model.trainable_layers"]
    assert "accuracy" in json.loads((project / "data/08_reporting/metrics.json").read_text())  # tested once
