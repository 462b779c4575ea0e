"""The bench machinery on a tiny config: every run produces its figures, the report files are written,
the Hugging Face baseline starts from toptune's initial weights, and MLflow gets the run.
(Structure only: no wall-clock assertion.)"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import mlflow
import pytest
import torch

from toptune import bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config(tiny_qwen3, small_spec, tmp_path) -> bench.BenchConfig:
    spec = {k: v for k, v in small_spec.items() if k != "num_layers"}  # the same spec: the checkpoint is reused
    return bench.BenchConfig(data_path=str(ROOT / "data" / "01_raw" / "reviews.csv"), model_dir=str(tiny_qwen3),
                             num_layers=small_spec["num_layers"], spec=spec, trainable_layers=2, epochs=1, sample_rows=120,
                             cache_dir=str(tmp_path / "cache"), out_dir=str(tmp_path / "out"), gpu_model=False)


def test_bench_runs_every_variant_and_writes_the_report(config, tmp_path, monkeypatch):
    from toptune.benchlog import bench as cli

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(bench, "parse_args", lambda argv=None: config)
    result = cli.main([])
    assert set(result) >= {"config", "device", "runs", "speedups"}
    assert list(result["runs"]) == list(bench.RUNS)
    for name, run in result["runs"].items():
        assert run["train_seconds"] > 0 and run["examples_per_second"] > 0, name
        assert len(run["epoch_seconds"]) == 1 and run["epoch_seconds"][0] > 0, name
        assert (name == "floor") == ("test_accuracy" not in run), name
        if name != "floor":
            assert 0 <= run["test_accuracy"] <= 1
    cache = result["runs"]["cache"]
    assert cache["cache_bytes"] > 0 and 0 < cache["cache_build_seconds"] < cache["train_seconds"]
    assert cache["padding_fraction"] <= cache["padding_fraction_unbucketed"]
    on_disk = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert on_disk["runs"].keys() == result["runs"].keys() and on_disk["device"] == result["device"]
    assert (tmp_path / "out" / "bench.png").stat().st_size > 0
    table = bench.format_table(result)
    assert all(name in table for name in bench.RUNS)
    assert result["speedups"]["cached_epoch_over_floor_epoch"] == pytest.approx(
        statistics.median(cache["epoch_seconds"]) / statistics.median(result["runs"]["floor"]["epoch_seconds"]))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("toptune-bench").experiment_id], output_format="list")
    assert run.data.metrics["cache.cache_bytes"] == cache["cache_bytes"]
    assert {"bench.json", "bench.png"} <= {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}


def test_hf_baseline_starts_from_toptune_weights(config):
    setup = bench.prepare_setup(config, config.model_dir)
    ours = dict(bench._classifier(setup, config).model.named_parameters())
    theirs = dict(bench.hf_model(setup, config).named_parameters())
    assert ours.keys() == theirs.keys()
    trainable = [n for n, p in ours.items() if p.requires_grad]
    assert any("lora_A" in n for n in trainable) and any("score" in n for n in trainable)
    assert trainable == [n for n, p in theirs.items() if p.requires_grad]
    for name in trainable:
        assert torch.equal(ours[name], theirs[name]), name
