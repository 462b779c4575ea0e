"""``make bench``: toptune's prefix modes side by side with Hugging Face ``Trainer`` + PEFT.

One process, one model, one data set, one recipe (AdamW, linear warm-up/decay, clipping, seed,
epochs, batch size), run after run:

    hf_trainer                  Trainer + PEFT ``layers_to_transform`` + ``DataCollatorWithPadding``
    hf_trainer_group_by_length  the same with ``train_sampling_strategy="group_by_length"``
    autograd / no_grad          toptune's live modes (stock forward / no_grad prefix)
    cache                       toptune's prefix cache, the build included in ``train_seconds``
    floor                       a bare loop over the same cached batches: forward, backward, fused
                                AdamW step; batches padded before the clock starts, no validation,
                                no schedule, no clipping, no logging — what the cached path costs
                                with no framework around it

Every run starts from the same initial weights (score head and LoRA seeded alike). ``train_seconds``
is end to end (training epochs + per-epoch validation, + cache build); ``epoch_seconds`` are the
training passes alone. Results go to ``data/08_reporting/bench.json`` (+ ``bench.png``); the MLflow
logging lives in :mod:`toptune.benchlog.bench` (the library imports no MLflow).

On CUDA a second bench runs a Qwen3-4B-shaped random-weight model (36 blocks, K=4, bf16) and
records peak device memory per run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from toptune.adapters import target_modules
from toptune.cache import (bucketing_padding, cached_logits, epoch_indices, fit_cached, predict_cached, prefix_bytes,
                           prepare_cache)
from toptune.config import DataConfig, LoraSettings, ModelConfig, TrainingConfig
from toptune.data import Encoded, encode_splits, label_map, prepare_table, split_table
from toptune.tiny import TinyQwenSpec, ensure_tiny_qwen
from toptune.recipe import build_classifier, fit, predict
from toptune.tokenizer import load_tokenizer
from toptune.train import fused_adamw_ok, resolve_device, seed_everything, trainable_parameters

log = logging.getLogger(__name__)

RUNS = ("hf_trainer", "hf_trainer_group_by_length", "autograd", "no_grad", "cache", "floor")

BENCH_SPEC = dict(hidden_size=256, intermediate_size=384, num_heads=8, num_kv_heads=4, head_dim=32,
                  initializer_range=0.05, embedding_std=1.0)
"""The bench's tiny Qwen3 (12 blocks, K=3). With the default tiny spec (width 128, init 0.1,
embeddings 0.3) 3 epochs end mid-way through the jump from a ~0.52 plateau to ~1.0 test accuracy,
at an epoch that moves with the batch order, so two equally correct recipes differ by up to 45
points and the accuracy comparison measures luck (at width 128 even with the settings below, seed 3
gave cache 0.76 against no_grad 1.0). At width 256 (init 0.05, embeddings 1.0, lr 1.5e-3, LoRA
alpha 64) the jump comes in epoch 1-2: seeds 1, 2, 3 and 42 gave cache 1.0 and no_grad >= 0.998."""

QWEN3_4B_SHAPE = dict(num_layers=36, hidden_size=2560, intermediate_size=9728, num_heads=32, num_kv_heads=8,
                      head_dim=128, initializer_range=0.02, embedding_std=0.02)
"""Qwen3-4B's shape (config.json of Qwen/Qwen3-4B); random weights, for time and memory only."""


@dataclass
class BenchConfig:
    """What ``make bench`` runs (flags of ``python -m toptune.benchlog.bench`` override each field)."""

    data_path: str = "data/01_raw/reviews.csv"
    """The bundled reviews table."""
    model_dir: str = "data/06_models/tiny-qwen3-12l-bench"
    """Where the seeded tiny Qwen3 of ``num_layers`` blocks is written (once)."""
    num_layers: int = 12
    """Blocks of the tiny Qwen3."""
    spec: dict = field(default_factory=lambda: dict(BENCH_SPEC))
    """Other ``TinyQwenSpec`` fields of the tiny model (tests shrink it)."""
    trainable_layers: int = 3
    """K: LoRA on the top K blocks."""
    epochs: int = 3
    batch_size: int = 16
    eval_batch_size: int = 64
    max_length: int = 128
    lr: float = 1.5e-3
    """Peak learning rate, shared by every run (see ``BENCH_SPEC`` for why not the default 3e-3)."""
    lora_alpha: int = 64
    """LoRA scale numerator (r = 8): alpha / r = 8."""
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    seed: int = 42
    sample_rows: int | None = None
    """Use only N rows of the table (smoke tests); None = all 6000."""
    cache_dir: str = "data/04_feature/bench_prefix_cache"
    """The cache run's directory (removed first: the build is part of the measured run)."""
    out_dir: str = "data/08_reporting"
    runs: tuple[str, ...] = RUNS
    gpu_model: bool = True
    """On CUDA, also bench the Qwen3-4B-shaped model (skipped without CUDA)."""
    gpu_model_dir: str = "data/06_models/qwen3-4b-shape-random"
    device: str = "auto"

    def training(self, mode: str, cache_dir: str | None = None) -> TrainingConfig:
        return TrainingConfig(prefix_mode=mode, epochs=self.epochs, batch_size=self.batch_size,
                              eval_batch_size=self.eval_batch_size, lr=self.lr, warmup_ratio=self.warmup_ratio,
                              max_grad_norm=self.max_grad_norm, max_length=self.max_length, seed=self.seed,
                              device=self.device, progress=False, log_every=10 ** 9,
                              cache_dir=cache_dir or self.cache_dir)


@dataclass
class Setup:
    """The shared inputs of every run."""

    model_path: str
    model_cfg: ModelConfig
    lora: LoraSettings
    data: dict[str, Encoded]
    id2label: dict[int, str]
    tokenizer: object
    device: torch.device


def device_name(device: torch.device) -> str:
    """``NVIDIA H100 …`` on CUDA; the CPU's model name and core count otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{name} ({len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores, " \
           f"{torch.get_num_threads()} torch threads)"


def prepare_setup(bc: BenchConfig, model_path: str, dtype: str = "auto") -> Setup:
    """Tokenise the bundled table once (template, split and seed of the default pipeline)."""
    tok = load_tokenizer(model_path)
    prepared = prepare_table(pd.read_csv(bc.data_path), DataConfig(sample_rows=bc.sample_rows))
    id2label = label_map(prepared.table["label"])
    splits = split_table(prepared.table, DataConfig(), bc.seed)
    data = encode_splits(splits, tok, bc.max_length, id2label)
    return Setup(model_path, ModelConfig(name_or_path=model_path, trainable_layers=bc.trainable_layers, dtype=dtype),
                 LoraSettings(alpha=bc.lora_alpha), data, id2label, tok, resolve_device(bc.device))


# --------------------------------------------------------------------------------------------------
# Measurement helpers
# --------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _row(setup: Setup, bc: BenchConfig, train_seconds: float, epoch_seconds: list[float],
         test_accuracy: float | None, **extra) -> dict:
    n = len(setup.data["train"])
    row = {"train_seconds": train_seconds, "epoch_seconds": epoch_seconds,
           "examples_per_second": n * bc.epochs / train_seconds if train_seconds > 0 else None}
    if test_accuracy is not None:
        row["test_accuracy"] = test_accuracy
    row.update(extra)
    if setup.device.type == "cuda":
        row["peak_device_memory_bytes"] = _peak(setup.device)
    return row


def _padding(setup: Setup, bc: BenchConfig) -> dict[str, float]:
    """The train batches' padding share over the bench's epochs, shuffled (live modes) or bucketed (cache)."""
    return bucketing_padding(setup.data["train"].lengths(), bc.batch_size, bc.seed, bc.epochs)


# --------------------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------------------


def hf_model(setup: Setup, bc: BenchConfig):
    """The classifier as a Hugging Face user builds it: ``from_pretrained`` + ``get_peft_model`` with
    ``layers_to_transform`` on the top K blocks. Seeded as toptune's ``build_classifier`` is, so the
    score head and the LoRA weights start from the same values (a test checks it)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    tok, lora = setup.tokenizer, setup.lora
    seed_everything(bc.seed)
    torch.manual_seed(bc.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        setup.model_path, num_labels=len(setup.id2label), id2label=setup.id2label,
        label2id={v: k for k, v in setup.id2label.items()}, pad_token_id=tok.pad_token_id,
        dtype=torch.bfloat16 if setup.model_cfg.dtype == "bfloat16" else torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    n_layers = model.config.num_hidden_layers
    top = list(range(n_layers - bc.trainable_layers, n_layers))
    # The same projections toptune adapts, named the way a user names them: leaf names + layers_to_transform.
    leaves = sorted({name.rpartition(".")[2] for name in target_modules(model, top, lora)})
    return get_peft_model(model, LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=leaves,
        layers_to_transform=top, layers_pattern="layers",
        task_type="SEQ_CLS")).to(setup.device)


def run_hf_trainer(setup: Setup, bc: BenchConfig, group_by_length: bool) -> dict:
    """Hugging Face ``Trainer`` + PEFT as a user would set it up: ``AutoModelForSequenceClassification``,
    ``LoraConfig(layers_to_transform=top K)``, ``DataCollatorWithPadding``, eval each epoch."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    tok, data = setup.tokenizer, setup.data
    model = hf_model(setup, bc)

    def dataset(enc: Encoded) -> Dataset:
        return Dataset.from_dict({"input_ids": enc.input_ids, "attention_mask": [[1] * len(x) for x in enc.input_ids],
                                  "label": enc.labels})

    class CountingCollator(DataCollatorWithPadding):
        """``DataCollatorWithPadding``, counting padded positions (for the report; two tensor sums)."""

        real = padded = 0

        def __call__(self, features):
            batch = super().__call__(features)
            CountingCollator.real += int(batch["attention_mask"].sum())
            CountingCollator.padded += batch["attention_mask"].numel()
            return batch

    class EpochTimer(TrainerCallback):
        """Training-pass time per epoch (``on_epoch_end`` comes before the epoch's evaluation)."""

        def __init__(self):
            self.seconds, self.t = [], 0.0

        def on_epoch_begin(self, args, state, control, **kw):
            _sync(setup.device)
            self.t = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kw):
            _sync(setup.device)
            self.seconds.append(time.perf_counter() - self.t)

    steps = math.ceil(len(data["train"]) / bc.batch_size) * bc.epochs
    sampling = {"train_sampling_strategy": "group_by_length"} if group_by_length else {}
    if group_by_length and "train_sampling_strategy" not in TrainingArguments.__dataclass_fields__:
        sampling = {"group_by_length": True}  # transformers < 5
    timer, out = EpochTimer(), tempfile.mkdtemp(prefix="toptune-bench-hf-")
    cuda = setup.device.type == "cuda"
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=bc.batch_size, per_device_eval_batch_size=bc.eval_batch_size,
        num_train_epochs=bc.epochs, learning_rate=bc.lr, weight_decay=0.0, lr_scheduler_type="linear",
        warmup_steps=int(bc.warmup_ratio * steps), max_grad_norm=bc.max_grad_norm, eval_strategy="epoch",
        save_strategy="no", logging_strategy="epoch", report_to="none", seed=bc.seed, disable_tqdm=True,
        use_cpu=not cuda, bf16=cuda and setup.model_cfg.dtype != "float32", dataloader_pin_memory=cuda, **sampling)

    def accuracy(p):
        return {"accuracy": float((np.asarray(p.predictions).argmax(-1) == p.label_ids).mean())}

    trainer = Trainer(model=model, args=args, train_dataset=dataset(data["train"]), eval_dataset=dataset(data["val"]),
                      data_collator=CountingCollator(tok), compute_metrics=accuracy, callbacks=[timer])
    CountingCollator.real = CountingCollator.padded = 0
    _reset_peak(setup.device)
    _sync(setup.device)
    t0 = time.perf_counter()
    trainer.train()
    _sync(setup.device)
    seconds = time.perf_counter() - t0
    peak = _peak(setup.device)
    pred = trainer.predict(dataset(data["test"]))
    acc = float((pred.predictions.argmax(-1) == pred.label_ids).mean())
    shutil.rmtree(out, ignore_errors=True)
    row = _row(setup, bc, seconds, timer.seconds, acc,
               padding_fraction=1 - CountingCollator.real / max(CountingCollator.padded, 1))
    if peak is not None:
        row["peak_device_memory_bytes"] = peak
    return row


def _classifier(setup: Setup, bc: BenchConfig):
    seed_everything(bc.seed)
    return build_classifier(setup.model_cfg, setup.lora, setup.id2label, bc.seed, bc.device, tokenizer=setup.tokenizer)


def run_toptune(setup: Setup, bc: BenchConfig, mode: str) -> dict:
    """toptune's ``recipe.fit`` in a live prefix mode (``autograd`` / ``no_grad``)."""
    clf = _classifier(setup, bc)
    _reset_peak(setup.device)
    _sync(setup.device)
    t0 = time.perf_counter()
    result = fit(clf, setup.data, bc.training(mode))
    _sync(setup.device)
    seconds = time.perf_counter() - t0
    peak = _peak(setup.device)
    acc = predict(clf, setup.data["test"], bc.eval_batch_size).accuracy
    row = _row(setup, bc, seconds, [e["epoch_seconds"] for e in result.epochs], acc,
               padding_fraction=_padding(setup, bc)["padding_fraction_unbucketed"])
    if peak is not None:
        row["peak_device_memory_bytes"] = peak
    return row


def run_cache(setup: Setup, bc: BenchConfig) -> dict:
    """toptune's cache mode from scratch: build (train/val/test) + cached epochs."""
    shutil.rmtree(bc.cache_dir, ignore_errors=True)
    clf = _classifier(setup, bc)
    cfg = bc.training("cache")
    _reset_peak(setup.device)
    _sync(setup.device)
    t0 = time.perf_counter()
    cache = prepare_cache(clf, setup.data, cfg, rebuild=True)
    _sync(setup.device)
    build = time.perf_counter() - t0
    peak_build = _peak(setup.device)
    _reset_peak(setup.device)
    result = fit_cached(clf, setup.data, cfg, cache=cache)
    _sync(setup.device)
    seconds = time.perf_counter() - t0
    peak_train = _peak(setup.device)
    acc = predict_cached(clf, cache, "test", setup.data["test"], bc.eval_batch_size).accuracy
    pad = _padding(setup, bc)
    row = _row(setup, bc, seconds, [e["epoch_seconds"] for e in result.epochs], acc,
               cache_build_seconds=build, cache_bytes=cache.bytes, cache_dtype=cache.fingerprint["dtype"],
               padding_fraction=pad["padding_fraction_bucketed"], padding_fraction_unbucketed=pad["padding_fraction_unbucketed"],
               prefix_weights_bytes=prefix_bytes(clf))
    if peak_train is not None:
        row.update(peak_device_memory_bytes=max(peak_build, peak_train), peak_device_memory_build_bytes=peak_build,
                   peak_device_memory_cached_epochs_bytes=peak_train, prefix_weights_offloaded_bytes=prefix_bytes(clf))
    return row


def run_floor(setup: Setup, bc: BenchConfig) -> dict:
    """The floor: fused AdamW over the top K blocks on the same cached, bucketed batches, nothing else."""
    clf = _classifier(setup, bc)
    cfg = bc.training("cache")
    cache = prepare_cache(clf, setup.data, cfg)  # the cache run's, reused (same fingerprint)
    split = cache.split("train", setup.data["train"], clf.pad_token_id)
    model, dev = clf.model, clf.device
    params = trainable_parameters(model)
    opt = torch.optim.AdamW(params, lr=bc.lr, weight_decay=0.0, fused=fused_adamw_ok(params))
    logits_fn = cached_logits(model, clf.first_trainable_layer)
    from toptune.cache import prefix_offloaded
    from toptune.train import autocast

    model.train()
    epochs = []
    _reset_peak(dev)
    with prefix_offloaded(clf):
        for epoch in range(bc.epochs):
            batches = [split.batch(idx, dev) for idx in epoch_indices(split, bc.batch_size, True, bc.seed + epoch, True)]
            _sync(dev)
            t = time.perf_counter()
            for b in batches:
                with autocast(dev):
                    logits = logits_fn(b)
                nn.functional.cross_entropy(logits.float(), b["labels"]).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            _sync(dev)
            epochs.append(time.perf_counter() - t)
    return _row(setup, bc, sum(epochs), epochs, None)


def run_all(setup: Setup, bc: BenchConfig, runs: tuple[str, ...] = RUNS) -> dict[str, dict]:
    """Every run in ``runs``, in order (``floor`` needs ``cache`` before it)."""
    fns = {"hf_trainer": lambda: run_hf_trainer(setup, bc, False),
           "hf_trainer_group_by_length": lambda: run_hf_trainer(setup, bc, True),
           "autograd": lambda: run_toptune(setup, bc, "autograd"),
           "no_grad": lambda: run_toptune(setup, bc, "no_grad"),
           "cache": lambda: run_cache(setup, bc),
           "floor": lambda: run_floor(setup, bc)}
    out = {}
    for name in runs:
        log.info("bench: %s …", name)
        out[name] = fns[name]()
        r = out[name]
        log.info("bench: %s %.1f s (%s)", name, r["train_seconds"],
                 ", ".join(f"{k}={v:.4g}" for k, v in r.items() if isinstance(v, float) and k != "train_seconds"))
    return out


def speedups(runs: dict[str, dict]) -> dict[str, float]:
    """The ratios the issue asks about (present when both runs are)."""
    out = {}
    if "cache" in runs:
        c = runs["cache"]["train_seconds"]
        for base in ("hf_trainer", "hf_trainer_group_by_length", "autograd", "no_grad"):
            if base in runs:
                out[f"{base}_over_cache"] = runs[base]["train_seconds"] / c
        if "hf_trainer" in runs:
            out["accuracy_gap_cache_vs_hf_trainer"] = abs(runs["cache"]["test_accuracy"] - runs["hf_trainer"]["test_accuracy"])
        if "floor" in runs:
            out["cached_epoch_over_floor_epoch"] = (statistics.median(runs["cache"]["epoch_seconds"])
                                                    / statistics.median(runs["floor"]["epoch_seconds"]))
    return out


def bench_config_dict(bc: BenchConfig, setup: Setup, spec: dict) -> dict:
    return {"model": spec, "model_path": setup.model_path, "num_layers": spec.get("num_layers"),
            "trainable_layers": bc.trainable_layers, "dtype": setup.model_cfg.dtype, "epochs": bc.epochs,
            "batch_size": bc.batch_size, "eval_batch_size": bc.eval_batch_size, "max_length": bc.max_length,
            "lr": bc.lr, "lora_alpha": bc.lora_alpha, "warmup_ratio": bc.warmup_ratio, "max_grad_norm": bc.max_grad_norm, "seed": bc.seed,
            "lora": dataclasses.asdict(setup.lora), "data": bc.data_path,
            "examples": {k: len(v) for k, v in setup.data.items()}, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__}


def ensure_gpu_model(bc: BenchConfig) -> Path:
    """Write the Qwen3-4B-shaped random checkpoint (bf16, ~8 GB) once, built on the GPU."""
    from toptune.tiny import tiny_config
    from toptune.tokenizer import ensure_qwen_tokenizer
    from transformers import AutoModelForCausalLM

    out = Path(bc.gpu_model_dir)
    marker = out / "toptune_spec.json"
    spec = TinyQwenSpec(**QWEN3_4B_SHAPE)
    if marker.is_file() and json.loads(marker.read_text()) == spec.__dict__:
        return out
    torch.manual_seed(spec.seed)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(tiny_config(spec), dtype=torch.bfloat16)
    model.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    ensure_qwen_tokenizer(out)
    marker.write_text(json.dumps(spec.__dict__, indent=1))
    return out


def warm_up(setup: Setup, bc: BenchConfig, runs: tuple[str, ...]) -> None:
    """Every run once on 64 examples, one epoch, unmeasured: first-call costs (lazy imports, kernel
    selection, allocator growth) then fall on no measured run, whichever runs first."""
    small = {k: Encoded(v.ids[:n], v.input_ids[:n], v.labels[:n], 0)
             for (k, v), n in zip(setup.data.items(), (64, 32, 32))}
    wbc = dataclasses.replace(bc, epochs=1, cache_dir=bc.cache_dir + "-warmup")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        run_all(dataclasses.replace(setup, data=small), wbc, runs)
    finally:
        log.setLevel(level)
        shutil.rmtree(wbc.cache_dir, ignore_errors=True)


def run_bench(bc: BenchConfig) -> dict:
    """The whole bench: the tiny model on this machine, plus the 4B-shaped model on CUDA. Returns
    ``{"config", "device", "runs", "speedups"}`` (+ ``"gpu_4b"`` with the same keys on CUDA)."""
    spec = {"num_layers": bc.num_layers, **bc.spec}
    model_path = str(ensure_tiny_qwen(bc.model_dir, TinyQwenSpec(**spec)))
    setup = prepare_setup(bc, model_path)
    warm_up(setup, bc, tuple(bc.runs))
    runs = run_all(setup, bc, tuple(bc.runs))
    result = {"config": bench_config_dict(bc, setup, spec), "device": device_name(setup.device), "runs": runs,
              "speedups": speedups(runs)}
    if bc.gpu_model and torch.cuda.is_available() and resolve_device(bc.device).type == "cuda":
        gbc = dataclasses.replace(bc, trainable_layers=4, cache_dir=bc.cache_dir + "-4b")
        gsetup = prepare_setup(gbc, str(ensure_gpu_model(bc)), dtype="bfloat16")
        warm_up(gsetup, gbc, tuple(bc.runs))
        gruns = run_all(gsetup, gbc, tuple(bc.runs))
        result["gpu_4b"] = {"config": bench_config_dict(gbc, gsetup, dict(QWEN3_4B_SHAPE)),
                            "device": device_name(gsetup.device), "runs": gruns, "speedups": speedups(gruns)}
    return result


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def format_table(result: dict) -> str:
    """A fixed-width table of the runs, with each run's speed relative to ``cache``."""
    lines = []
    for title, part in [("", result)] + ([("Qwen3-4B-shaped, bf16", result["gpu_4b"])] if "gpu_4b" in result else []):
        runs = part["runs"]
        c = runs.get("cache", {}).get("train_seconds")
        lines.append(f"bench {title} on {part['device']}".replace("  ", " "))
        head = f"{'run':<28}{'train s':>9}{'epoch s (median)':>18}{'ex/s':>9}{'test acc':>10}{'pad %':>7}{'÷cache':>8}"
        has_mem = any("peak_device_memory_bytes" in r for r in runs.values())
        lines.append(head + (f"{'peak GiB':>10}" if has_mem else ""))
        for name, r in runs.items():
            acc = f"{r['test_accuracy']:.4f}" if "test_accuracy" in r else "-"
            pad = f"{100 * r['padding_fraction']:.1f}" if "padding_fraction" in r else "-"
            ratio = f"{r['train_seconds'] / c:.2f}x" if c else "-"
            line = (f"{name:<28}{r['train_seconds']:>9.2f}{statistics.median(r['epoch_seconds']):>18.2f}"
                    f"{r['examples_per_second']:>9.0f}{acc:>10}{pad:>7}{ratio:>8}")
            if has_mem:
                mem = r.get("peak_device_memory_bytes")
                line += f"{mem / 2 ** 30:>10.2f}" if mem else f"{'-':>10}"
            lines.append(line)
        if "cache" in runs:
            cr = runs["cache"]
            lines.append(f"cache: build {cr['cache_build_seconds']:.2f} s, {cr['cache_bytes'] / 2 ** 20:.1f} MiB on disk "
                         f"({cr['cache_dtype']}); padding {100 * cr['padding_fraction_unbucketed']:.1f}% → "
                         f"{100 * cr['padding_fraction']:.1f}% with length bucketing")
        if part.get("speedups"):
            lines.append("  ".join(f"{k}={v:.3f}" for k, v in part["speedups"].items()))
        lines.append("")
    return "\n".join(lines)


def chart(result: dict, path: str | Path) -> Path:
    """Bar chart of end-to-end train seconds per run (the cache's build stacked), test accuracy on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [("", result)] + ([("Qwen3-4B-shaped (bf16)", result["gpu_4b"])] if "gpu_4b" in result else [])
    fig, axes = plt.subplots(1, len(parts), figsize=(8 * len(parts), 4.5), squeeze=False)
    for ax, (title, part) in zip(axes[0], parts):
        runs = part["runs"]
        names = list(runs)
        total = [runs[n]["train_seconds"] for n in names]
        build = [runs[n].get("cache_build_seconds", 0.0) for n in names]
        x = np.arange(len(names))
        ax.bar(x, [t - b for t, b in zip(total, build)], color=["#8da0cb" if n.startswith("hf") else "#66c2a5" for n in names],
               label="training (+ validation)")
        ax.bar(x, build, bottom=[t - b for t, b in zip(total, build)], color="#fc8d62", label="cache build")
        for xi, n, t in zip(x, names, total):
            acc = runs[n].get("test_accuracy")
            ax.text(xi, t, f"{t:.1f}s" + (f"\nacc {acc:.3f}" if acc is not None else ""), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [n.replace("hf_trainer_group_by_length", "hf_trainer\n+group_by_length") for n in names],
                      rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("end-to-end train seconds")
        ax.set_ylim(0, max(total) * 1.25)
        ax.set_title(f"{title} {part['device']}".strip(), fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """``bench.json`` and ``bench.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    return {"json": out / "bench.json", "png": chart(result, out / "bench.png")}


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    bc = BenchConfig()
    p = argparse.ArgumentParser(prog="toptune.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=bc.epochs)
    p.add_argument("--layers", type=int, default=bc.num_layers, help="blocks of the tiny Qwen3")
    p.add_argument("--k", type=int, default=bc.trainable_layers, help="trainable top blocks")
    p.add_argument("--batch-size", type=int, default=bc.batch_size)
    p.add_argument("--max-length", type=int, default=bc.max_length)
    p.add_argument("--lr", type=float, default=bc.lr)
    p.add_argument("--seed", type=int, default=bc.seed)
    p.add_argument("--sample-rows", type=int, default=None)
    p.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of " + ", ".join(RUNS))
    p.add_argument("--out-dir", default=bc.out_dir)
    p.add_argument("--device", default=bc.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-gpu-model", action="store_true", help="skip the Qwen3-4B-shaped run on CUDA")
    a = p.parse_args(argv)
    model_dir = bc.model_dir if a.layers == 12 else f"data/06_models/tiny-qwen3-{a.layers}l-bench"
    return dataclasses.replace(bc, epochs=a.epochs, num_layers=a.layers, trainable_layers=a.k, batch_size=a.batch_size,
                               max_length=a.max_length, lr=a.lr, seed=a.seed, sample_rows=a.sample_rows,
                               runs=tuple(r for r in a.runs.split(",") if r), out_dir=a.out_dir, device=a.device,
                               gpu_model=not a.no_gpu_model, model_dir=model_dir)


def main(argv: list[str] | None = None) -> dict:
    """Run the bench, write ``bench.json`` / ``bench.png``, print the table (no MLflow: see ``toptune.benchlog.bench``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("transformers", "peft", "datasets", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import transformers

    transformers.logging.set_verbosity_error()
    bc = parse_args(argv)
    result = run_bench(bc)
    paths = write_outputs(result, bc.out_dir)
    print(format_table(result))
    print(f"wrote {paths['json']} and {paths['png']}")
    return result


if __name__ == "__main__":
    main()
