"""The bench's report: the ratios the checks read, a fixed-width table, a bar chart, ``bench.json``."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the chart is written to a file, never shown

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

BASELINES = ("hf_trainer", "hf_trainer_group_by_length", "autograd", "no_grad")


def speedups(runs: dict[str, dict]) -> dict[str, float]:
    """``<run>_over_cache`` (end-to-end seconds), the accuracy gap to ``hf_trainer``, the cached epoch
    over the floor's (medians), and on CUDA the device-memory shares of the cache run against
    ``hf_trainer``'s peak. Each ratio is present when both of its runs are."""
    out: dict[str, float] = {}
    if "cache" not in runs:
        return out
    cache = runs["cache"]
    for base in BASELINES:
        if base in runs:
            out[f"{base}_over_cache"] = runs[base]["train_seconds"] / cache["train_seconds"]
    hf = runs.get("hf_trainer")
    if hf is not None:
        out["accuracy_gap_cache_vs_hf_trainer"] = abs(cache["test_accuracy"] - hf["test_accuracy"])
        if hf.get("peak_device_memory_bytes") and cache.get("peak_device_memory_cached_epochs_bytes"):
            out["cache_epochs_peak_memory_over_hf_trainer"] = (
                cache["peak_device_memory_cached_epochs_bytes"] / hf["peak_device_memory_bytes"]
            )
            out["cache_peak_memory_over_hf_trainer"] = (
                cache["peak_device_memory_bytes"] / hf["peak_device_memory_bytes"]
            )
    if "floor" in runs:
        out["cached_epoch_over_floor_epoch"] = statistics.median(cache["epoch_seconds"]) / statistics.median(
            runs["floor"]["epoch_seconds"]
        )
    return out


def _gpu_title(part: dict) -> str:
    checkpoint = part.get("config", {}).get("model", {}).get("checkpoint")
    return f"{checkpoint}, bf16" if checkpoint else "Qwen3-4B-shaped, bf16"


def parts(result: dict) -> list[tuple[str, dict]]:
    """(title, part) of each bench in ``result``: the tiny model, then the Qwen3-4B shape, each when it ran."""
    return ([("", result)] if "runs" in result else []) + (
        [(_gpu_title(result["gpu_4b"]), result["gpu_4b"])] if "gpu_4b" in result else []
    )


def _table_row(r: dict, cache_seconds: float | None, has_mem: bool) -> dict:
    """One run's row of :func:`format_table` ("-" where the run did not measure it)."""
    row = {
        "train s": round(r["train_seconds"], 2),
        "epoch s (median)": round(statistics.median(r["epoch_seconds"]), 2),
        "ex/s": round(r["examples_per_second"]),
        "test acc": f"{r['test_accuracy']:.4f}" if "test_accuracy" in r else "-",
        "pad %": f"{100 * r['padding_fraction']:.1f}" if "padding_fraction" in r else "-",
        "÷cache": f"{r['train_seconds'] / cache_seconds:.2f}x" if cache_seconds else "-",
    }
    if has_mem:
        mem = r.get("peak_device_memory_bytes")
        row["peak GiB"] = f"{mem / 2**30:.2f}" if mem else "-"
    return row


def format_table(result: dict) -> str:
    """A table of the runs (markdown), each run's end-to-end time relative to ``cache``."""
    lines = []
    for title, part in parts(result):
        runs = part["runs"]
        c = runs.get("cache", {}).get("train_seconds")
        has_mem = any("peak_device_memory_bytes" in r for r in runs.values())
        lines.append(f"bench {title} on {part['device']}".replace("  ", " "))
        rows = {name: _table_row(r, c, has_mem) for name, r in runs.items()}
        lines.append(pd.DataFrame.from_dict(rows, orient="index").to_markdown())
        if "cache" in runs:
            cr = runs["cache"]
            lines.append(
                f"cache: build {cr['cache_build_seconds']:.2f} s, {cr['cache_bytes'] / 2**20:.1f} MiB on disk "
                f"({cr['cache_dtype']}); padding {100 * cr['padding_fraction_unbucketed']:.1f}% → "
                f"{100 * cr['padding_fraction']:.1f}% with length bucketing"
            )
            if cr.get("peak_device_memory_cached_epochs_bytes"):
                lines.append(
                    f"cache: peak device memory {cr['peak_device_memory_build_bytes'] / 2**30:.2f} GiB building, "
                    f"{cr['peak_device_memory_cached_epochs_bytes'] / 2**30:.2f} GiB in the cached epochs "
                    f"(prefix weights {cr['prefix_weights_bytes'] / 2**30:.2f} GiB off the device)"
                )
        if part.get("speedups"):
            lines.append("  ".join(f"{k}={v:.3f}" for k, v in part["speedups"].items()))
        lines.append("")
    return "\n".join(lines)


def chart(result: dict, path: str | Path) -> Path:
    """Bar chart of end-to-end train seconds per run (the cache's build stacked), test accuracy on top."""
    benches = parts(result)
    fig, axes = plt.subplots(1, len(benches), figsize=(8 * len(benches), 4.5), squeeze=False)
    for ax, (title, part) in zip(axes[0], benches, strict=True):
        runs = part["runs"]
        names = list(runs)
        total = np.array([runs[n]["train_seconds"] for n in names])
        build = np.array([runs[n].get("cache_build_seconds", 0.0) for n in names])
        x = np.arange(len(names))
        ax.bar(
            x,
            total - build,
            color=["#8da0cb" if n.startswith("hf") else "#66c2a5" for n in names],
            label="training (+ validation)",
        )
        ax.bar(x, build, bottom=total - build, color="#fc8d62", label="cache build")
        for xi, n, t in zip(x, names, total, strict=True):
            acc = runs[n].get("test_accuracy")
            ax.text(
                xi,
                t,
                f"{t:.1f}s" + (f"\nacc {acc:.3f}" if acc is not None else ""),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(
            x,
            [n.replace("hf_trainer_group_by_length", "hf_trainer\n+group_by_length") for n in names],
            rotation=20,
            ha="right",
            fontsize=8,
        )
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


def write_report(result: dict, out_dir: str | Path, name: str, table: str) -> Path:
    """``result`` as ``out_dir/name`` (JSON); ``table`` and the path printed (the sweep and probe benches)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(result, indent=1))
    print(table)
    print(f"wrote {out / name}")
    return out / name
