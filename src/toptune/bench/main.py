"""``make bench``: toptune's prefix modes side by side with Hugging Face ``Trainer`` + PEFT.

Default: a seeded tiny Qwen3 of Qwen3-0.6B's depth (28 blocks, width 256), K=4, 3 epochs on the
bundled reviews; on CUDA also the Qwen3-4B-shaped bench (:mod:`toptune.bench.gpu`). Results go to
``data/08_reporting/bench.json`` (+ ``bench.png``); the MLflow logging lives in
:mod:`toptune.integrations.bench` (the library imports no MLflow).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import torch
import transformers

from toptune.bench.config import (
    RUNS,
    BenchConfig,
    GpuBenchConfig,
    config_dict,
    device_name,
    prepare_setup,
)
from toptune.bench.gpu import run_gpu_bench
from toptune.bench.profile import format_profile, profile_cache
from toptune.bench.report import format_table, speedups, write_outputs
from toptune.bench.runs import bench_classifier, run_all, warm_up
from toptune.model.tiny import TinyQwenSpec, ensure_tiny_qwen


def run_bench(bc: BenchConfig, tiny: bool = True) -> dict:
    """``{"config", "device", "runs", "speedups"}`` of the tiny model (unless ``tiny`` is false), plus
    ``"gpu_4b"`` with the same keys when ``bc.gpu`` is enabled and its device is present."""
    result: dict = {}
    if tiny:
        spec = {"num_layers": bc.num_layers, **bc.spec}
        setup = prepare_setup(bc, str(ensure_tiny_qwen(bc.model_path(), TinyQwenSpec(**spec))))
        if bc.warm_up:
            warm_up(setup, bc, bc.runs)
        runs = run_all(setup, bc, bc.runs)
        result = {
            "config": config_dict(bc, setup, spec),
            "device": device_name(setup.device),
            "runs": runs,
            "speedups": speedups(runs),
        }
        if bc.profile and "cache" in bc.runs:
            result["profile"] = profile_cache(setup, bc, bench_classifier(setup, bc), bc.out_dir)
    g = bc.gpu
    if g.enabled and (g.device != "cuda" or torch.cuda.is_available()):
        result["gpu_4b"] = run_gpu_bench(bc)
    return result


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, bool]:
    """(the bench's config, whether to run the tiny model's bench) from command-line flags."""
    bc, g = BenchConfig(), GpuBenchConfig()
    p = argparse.ArgumentParser(prog="python -m toptune.integrations.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=bc.num_layers, help="blocks of the tiny Qwen3")
    p.add_argument("--trainable-layers", type=int, default=bc.trainable_layers, help="trainable top blocks (K)")
    p.add_argument("--epochs", type=int, default=bc.training.epochs)
    p.add_argument("--batch-size", type=int, default=bc.training.batch_size)
    p.add_argument("--max-length", type=int, default=bc.training.max_length)
    p.add_argument("--lr", type=float, default=bc.training.lr)
    p.add_argument("--seed", type=int, default=bc.training.seed)
    p.add_argument("--sample-rows", type=int, default=None, help="use only N rows of the bundled table")
    p.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of " + ", ".join(RUNS))
    p.add_argument("--out-dir", default=bc.out_dir)
    p.add_argument("--device", default=bc.training.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-warm-up", action="store_true", help="skip the unmeasured warm-up pass")
    p.add_argument("--no-gpu-model", action="store_true", help="skip the Qwen3-4B-shaped bench on CUDA")
    p.add_argument("--no-profile", action="store_true", help="skip the profile of a build batch and a cached epoch")
    p.add_argument("--gpu-only", action="store_true", help="run only the Qwen3-4B-shaped bench (CUDA)")
    p.add_argument("--gpu-rows", type=int, default=g.rows, help="texts in the Qwen3-4B-shaped bench's table")
    p.add_argument("--gpu-runs", default=",".join(g.runs), help="runs of the Qwen3-4B-shaped bench")
    p.add_argument("--gpu-max-length", type=int, default=g.max_length, help="tokens per text of the 4B-shaped bench")
    p.add_argument("--gpu-checkpoint", default=None, help="bench this checkpoint in place of the random 4B shape")
    a = p.parse_args(argv)
    training = dataclasses.replace(
        bc.training,
        epochs=a.epochs,
        batch_size=a.batch_size,
        max_length=a.max_length,
        lr=a.lr,
        seed=a.seed,
        device=a.device,
    )
    gpu = dataclasses.replace(
        g,
        enabled=not a.no_gpu_model,
        rows=a.gpu_rows,
        max_length=a.gpu_max_length,
        checkpoint=a.gpu_checkpoint,
        runs=tuple(r for r in a.gpu_runs.split(",") if r),
    )
    bc = dataclasses.replace(
        bc,
        num_layers=a.layers,
        trainable_layers=a.trainable_layers,
        training=training,
        sample_rows=a.sample_rows,
        runs=tuple(r for r in a.runs.split(",") if r),
        out_dir=a.out_dir,
        warm_up=not a.no_warm_up,
        gpu=gpu,
        profile=not a.no_profile,
    )
    return bc, not a.gpu_only


def quiet_libraries() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("transformers", "peft", "datasets", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    transformers.logging.set_verbosity_error()


def main(argv: list[str] | None = None, bc: BenchConfig | None = None, tiny: bool = True) -> dict:
    """Run the bench (``bc``, else from ``argv``), write ``bench.json`` / ``bench.png``, print the table."""
    quiet_libraries()
    if bc is None:
        bc, tiny = parse_args(argv)
    result = run_bench(bc, tiny)
    paths = write_outputs(result, bc.out_dir)
    print(format_table(result))
    for profiles in (result.get("profile"), result.get("gpu_4b", {}).get("profile")):
        if profiles:
            print(format_profile(profiles))
    print(f"wrote {paths['json']} and {paths['png']}")
    return result


if __name__ == "__main__":
    main()
