"""Where a cache run's time goes: ``torch.profiler`` over one build batch and one cached epoch, after the
bench's timed runs (so the profiler's overhead is on no measured run).

The build batch is the first one a build computes (the longest examples, ``BUILD_BATCH_TOKENS`` tokens);
the cached epoch is one epoch of ``fit_cached`` on the cache run's cache, validation included, as the
cache run trains it. Each gives a Chrome trace (``profile_<name>.json``, open it in Perfetto or
``chrome://tracing``) and its top operators by self time: device time on CUDA (the kernels), host time
on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from toptune.bench.config import BenchConfig, Setup
from toptune.cache import fit_cached, prepare_cache
from toptune.cache.plan import build_order
from toptune.cache.shard import BUILD_BATCH_TOKENS
from toptune.data.batches import rows_batch
from toptune.prefix.forward import run_prefix
from toptune.train.device import autocast, to_device

TOP = 15
"""Operators listed per profile."""


def top_ops(prof: profile, device: torch.device, top: int = TOP) -> list[dict]:
    """The ``top`` operators by self time (device time on CUDA, host time elsewhere): name, calls,
    milliseconds and share of the profile's total."""
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr) > 0]
    total = sum(getattr(e, attr) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    return [
        {"name": e.key, "calls": e.count, "ms": getattr(e, attr) / 1e3, "share": getattr(e, attr) / total}
        for e in events[:top]
    ]


def _profiled(device: torch.device, run, trace: Path) -> dict:
    """``run()`` under the profiler (CPU, and CUDA on a GPU); its trace written to ``trace``, its top ops."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    prof.export_chrome_trace(str(trace))
    return {"trace": str(trace), "top": top_ops(prof, device)}


def profile_cache(setup: Setup, bc: BenchConfig, clf, out_dir: str | Path) -> dict:
    """``{"build_batch": …, "cached_epoch": …}`` (each ``{"trace", "top"}``) of classifier ``clf`` on the
    bench's train and val splits; the cache is the cache run's (built here if there is none)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in setup.data.items() if k != "test"}
    cfg = bc.train_cfg("cache", epochs=1, progress=False)
    cache = prepare_cache(clf, data, cfg)
    enc, dev = data["train"], clf.device
    order = build_order(enc.lengths())
    rows = max(1, BUILD_BATCH_TOKENS.get(dev.type, 8192) // max(int(enc.lengths()[order[0]]), 1))
    b = rows_batch(enc, order[:rows], clf.pad_token_id)

    @torch.inference_mode()
    def build_batch() -> None:
        ids, mask = to_device(b["input_ids"], dev), to_device(b["attention_mask"], dev)
        with autocast(dev):
            run_prefix(clf.model, ids, mask, clf.first_trainable_block)

    clf.model.eval()
    build_batch()  # kernels chosen and memory allocated before the profile
    clf.model.train()
    return {
        "build_batch": _profiled(dev, build_batch, out / "profile_build_batch.json"),
        "cached_epoch": _profiled(
            dev, lambda: fit_cached(clf, data, cfg, cache=cache), out / "profile_cached_epoch.json"
        ),
    }


def format_profile(profiles: dict) -> str:
    """The top operators of each profile as text lines."""
    lines = []
    for name, p in profiles.items():
        lines.append(f"{name} ({p['trace']}):")
        lines += [f"  {o['share']:6.1%} {o['ms']:10.1f} ms {o['calls']:7d}×  {o['name']}" for o in p["top"]]
    return "\n".join(lines)
