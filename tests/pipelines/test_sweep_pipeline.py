"""``kedro run --pipeline sweep`` in a real Kedro session, sqlite Optuna storage and MLflow store: trials on
one prefix cache built once (at the deepest K of the space), a child run per trial under the sweep's run,
the best trial's bundle naming its trial, a sweep started again continuing its study, and two project copies
running one sweep at once on one storage."""

from __future__ import annotations

import json
import os
import subprocess

import mlflow
import optuna
import pytest

from support.kedro_proc import BIN, ENV
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


def test_two_project_copies_run_one_sweep_on_one_storage_at_once(tmp_path, tiny_qwen3):
    """Two machines' worth of the sweep (two project copies, each its own cache and MLflow store) started
    together against one sqlite storage: every trial numbered once, none lost, each copy ends with a bundle."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    params = (
        f"data.sample_rows=240,training.epochs=2,training.progress=false,model.name_or_path={tiny_qwen3},"
        f"sweep.trials=6,sweep.prune=false,sweep.storage={storage}"
    )
    copies = [make_project(tmp_path / name) for name in ("a", "b")]
    env = {**os.environ, **ENV}
    procs = [
        subprocess.Popen(
            [str(BIN / "kedro"), "run", "--pipeline", "sweep", "--params", params],
            cwd=c,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for c in copies
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]

    trials = optuna.load_study(study_name="toptune", storage=storage).get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials))) and 6 <= len(trials) <= 7  # one more at most, started at once
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    ran, by_copy = [], []
    for c in copies:
        mlflow.set_tracking_uri(f"sqlite:///{c / 'mlflow.db'}")
        runs = mlflow.search_runs([mlflow.get_experiment_by_name("toptune").experiment_id], output_format="list")
        mine = [int(r.data.tags["sweep.trial"]) for r in runs if "sweep.trial" in r.data.tags]
        ran, by_copy = ran + mine, by_copy + [len(mine)]
        bundle = json.loads((c / "data/06_models/adapter/toptune.json").read_text())
        report = json.loads((c / "data/08_reporting/sweep.json").read_text())
        assert bundle["extra"]["sweep"]["trial"] == report["best"]["number"]
    assert sorted(ran) == numbers  # each trial run by exactly one copy: none lost, none twice
    assert min(by_copy) >= 1, f"one copy ran no trial ({by_copy}): the two did not share the study at once"
