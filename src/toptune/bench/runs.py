"""The bench's runs: one model, one data set, one recipe, each run timed by the same
:class:`toptune.bench.timing.timed`.

    hf_trainer                  Trainer + PEFT ``layers_to_transform`` + ``DataCollatorWithPadding``
                                (:mod:`toptune.bench.hf`)
    hf_trainer_group_by_length  the same with ``train_sampling_strategy="group_by_length"``
    autograd / no_grad          toptune's live modes (stock forward / no_grad prefix)
    cache                       toptune's prefix cache, the build (train + val) included in ``train_seconds``
    floor                       a bare loop over the cache run's batches: forward, backward, fused
                                AdamW step; batches padded before the clock starts, no validation,
                                no schedule, no clipping, no logging

Every run starts from the same initial weights (score head and LoRA seeded alike). ``train_seconds``
is end to end (training epochs + per-epoch validation, + the cache build of train and val); ``epoch_seconds``
are the training passes alone. The test split is predicted after the clock stops, in every run.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil

import numpy as np
import torch
from torch import nn
from transformers import set_seed

from toptune.bench.config import RUNS, BenchConfig, Setup
from toptune.bench.hf import run_hf_trainer
from toptune.bench.timing import peak_from_first_call, result_row, timed
from toptune.cache import (
    bucketing_padding,
    cached_logits,
    epoch_indices,
    fit_cached,
    predict_cached,
    prefix_bytes,
    prefix_offloaded,
    prepare_cache,
)
from toptune.config import PrefixMode
from toptune.data.tokens import Encoded
from toptune.model.load import score_head
from toptune.train.device import autocast
from toptune.train.loop import (
    fused_adamw_ok,
    trainable_parameters,
)
from toptune.train.recipe import build_classifier, fit, predict

log = logging.getLogger(__name__)


def _padding(setup: Setup, bc: BenchConfig) -> dict[str, float]:
    """The train batches' padding share over the bench's epochs, shuffled (live modes) or bucketed (cache)."""
    return bucketing_padding(
        setup.data["train"].lengths(), bc.training.batch_size, bc.training.seed, bc.training.epochs
    )


def bench_classifier(setup: Setup, bc: BenchConfig):
    """The bench's classifier, seeded alike for every run (same score head and LoRA weights)."""
    set_seed(bc.training.seed)
    return build_classifier(
        setup.model_cfg, setup.lora, setup.id2label, bc.training.seed, bc.training.device, tokenizer=setup.tokenizer
    )


def run_toptune(setup: Setup, bc: BenchConfig, mode: PrefixMode) -> dict:
    """toptune's ``recipe.fit`` in a live prefix mode (``autograd`` / ``no_grad``)."""
    clf = bench_classifier(setup, bc)
    with timed(setup.device) as t:
        result = fit(clf, setup.data, bc.train_cfg(mode))
    acc = predict(clf, setup.data["test"], bc.training.eval_batch_size).accuracy
    return result_row(
        setup,
        bc,
        t,
        [e["epoch_seconds"] for e in result.epochs],
        acc,
        padding_fraction=_padding(setup, bc)["padding_fraction_unbucketed"],
    )


def train_val(data: dict[str, Encoded]) -> dict[str, Encoded]:
    """The splits a training run touches: train and val (test is predicted after the clock, in every run)."""
    return {k: v for k, v in data.items() if k != "test"}


def run_cache(setup: Setup, bc: BenchConfig) -> dict:
    """toptune's cache mode from scratch: build (train + val) + cached epochs on the clock. The test
    split, predicted after the clock in every run, gets its own cache then (timed apart)."""
    cfg = bc.train_cfg("cache")
    for d in (cfg.cache_dir, cfg.cache_dir + "-test"):
        shutil.rmtree(d, ignore_errors=True)
    clf, data = bench_classifier(setup, bc), train_val(setup.data)
    with timed(setup.device) as t:
        with timed(setup.device) as build:
            cache = prepare_cache(clf, data, cfg, rebuild=True)
        with timed(setup.device) as epochs, peak_from_first_call(score_head(clf.model), setup.device) as epochs_peak:
            result = fit_cached(clf, data, cfg, cache=cache)
    with timed(setup.device, peak=False) as test_build:
        test_cache = prepare_cache(clf, {"test": setup.data["test"]}, cfg, cfg.cache_dir + "-test")
    acc = predict_cached(clf, test_cache, "test", setup.data["test"], bc.training.eval_batch_size).accuracy
    pad = _padding(setup, bc)
    row = result_row(
        setup,
        bc,
        t,
        [e["epoch_seconds"] for e in result.epochs],
        acc,
        cache_build_seconds=build.seconds,
        cache_bytes=cache.bytes,
        cache_dtype=cache.fingerprint["dtype"],
        test_cache_build_seconds=test_build.seconds,
        prefix_weights_bytes=prefix_bytes(clf),
        padding_fraction=pad["padding_fraction_bucketed"],
        padding_fraction_unbucketed=pad["padding_fraction_unbucketed"],
    )
    if build.peak_device_bytes is not None:
        if epochs_peak["bytes"] is None:
            log.warning(
                "bench: the score head was never called as a module in the cached epochs; "
                "their own peak device memory is unknown"
            )
        row.update(
            peak_device_memory_bytes=max(build.peak_device_bytes, epochs.peak_device_bytes or 0),
            peak_device_memory_build_bytes=build.peak_device_bytes,
            peak_device_memory_cached_epochs_bytes=epochs_peak["bytes"],
        )
    return row


def run_floor(setup: Setup, bc: BenchConfig) -> dict:
    """The floor: fused AdamW over the top K blocks on the same cached, bucketed batches, nothing else."""
    tc, clf = bc.training, bench_classifier(setup, bc)
    cache = prepare_cache(
        clf, train_val(setup.data), bc.train_cfg("cache")
    )  # the cache run's, reused (same fingerprint)
    split = cache.split("train", setup.data["train"], clf.pad_token_id)
    params = trainable_parameters(clf.model)
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=0.0, fused=fused_adamw_ok(params))
    logits_fn, dev = cached_logits(clf.model, clf.first_trainable_block), clf.device
    clf.model.train()
    epochs: list[timed] = []
    with prefix_offloaded(clf):
        for epoch in range(tc.epochs):
            batches = [
                split.batch(idx, dev) for idx in epoch_indices(split, tc.batch_size, True, tc.seed + epoch, True)
            ]
            with timed(dev) as t:
                for b in batches:
                    with autocast(dev):
                        logits = logits_fn(b)  # (B, C)
                    nn.functional.cross_entropy(logits.float(), b["labels"]).backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            epochs.append(t)
    total = timed(dev, peak=False)  # the epochs' sum: batch gathering stays off the floor's clock
    total.seconds = sum(t.seconds for t in epochs)
    total.peak_device_bytes = max(t.peak_device_bytes or 0 for t in epochs) if dev.type == "cuda" else None
    return result_row(setup, bc, total, [t.seconds for t in epochs], None)


def run_all(setup: Setup, bc: BenchConfig, runs: tuple[str, ...] = RUNS) -> dict[str, dict]:
    """Every run in ``runs``, in order (``floor`` needs ``cache`` before it)."""
    fns = {
        "hf_trainer": lambda: run_hf_trainer(setup, bc, False),
        "hf_trainer_group_by_length": lambda: run_hf_trainer(setup, bc, True),
        "autograd": lambda: run_toptune(setup, bc, "autograd"),
        "no_grad": lambda: run_toptune(setup, bc, "no_grad"),
        "cache": lambda: run_cache(setup, bc),
        "floor": lambda: run_floor(setup, bc),
    }
    unknown = [r for r in runs if r not in fns]
    if unknown:
        raise ValueError(f"bench runs: unknown run {unknown[0]!r}; known: {', '.join(RUNS)}")
    out = {}
    for name in runs:
        log.info("bench: %s …", name)
        out[name] = r = fns[name]()
        log.info(
            "bench: %s %.1f s (%s)",
            name,
            r["train_seconds"],
            ", ".join(f"{k}={v:.4g}" for k, v in r.items() if isinstance(v, float) and k != "train_seconds"),
        )
        if setup.device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def warm_up(setup: Setup, bc: BenchConfig, runs: tuple[str, ...]) -> None:
    """Every run once on 64 examples, one epoch, unmeasured: first-call costs (lazy imports, kernel
    selection, allocator growth) then fall on no measured run, whichever runs first."""
    small = {k: v.take(np.arange(n)) for (k, v), n in zip(setup.data.items(), (64, 32, 32), strict=True)}
    wbc = dataclasses.replace(
        bc, training=dataclasses.replace(bc.training, epochs=1, cache_dir=bc.training.cache_dir + "-warmup")
    )
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        run_all(dataclasses.replace(setup, data=small), wbc, runs)
    finally:
        log.setLevel(level)
        for d in (wbc.training.cache_dir, wbc.training.cache_dir + "-test"):
            shutil.rmtree(d, ignore_errors=True)
