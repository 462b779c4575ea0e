"""The inspect report as a table, two figures and flat MLflow metrics."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from toptune.inspect.measure import block_keys, prefix_keys  # noqa: E402


def mib(n: int | float) -> float:
    return n / 2**20


def human(n: int) -> str:
    """Bytes as ``B`` / ``KiB`` / ``MiB`` / ``GiB``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _table_row(m: dict, prefix: list[str]) -> dict:
    """One measured mode's row of :func:`format_table`."""
    return {
        "saved MiB": round(mib(m["saved_bytes_total"]), 2),
        "prefix MiB": round(mib(m["prefix_saved_bytes"]), 2),
        "nodes": m["autograd_nodes"],
        "prefix nodes": sum(m["autograd_nodes_by_block"].get(b, 0) for b in prefix),
        "trainable": m["trainable_params"],
        "frozen": m["frozen_params"],
        "step s": round(m["step_seconds"], 3),
        "cuda peak MiB": "not measured" if m["cuda_peak_bytes"] is None else f"{mib(m['cuda_peak_bytes']):.1f}",
    }


def format_table(report: dict) -> str:
    """A readable per-mode table (MiB saved, prefix share, nodes, parameters), ratio and estimate."""
    modes = report["modes"]
    prefix = prefix_keys(report) if report.get("model") else []
    rows = {name: _table_row(m, prefix) for name, m in modes.items() if "skipped" not in m}
    lines = [pd.DataFrame.from_dict(rows, orient="index").to_markdown()] if rows else []
    lines += [f"{name}: skipped: {m['skipped']}" for name, m in modes.items() if "skipped" in m]
    r = report.get("ratios", {})
    if "topk_no_grad_over_lora_all" in r:
        lines.append(
            f"topk_no_grad / lora_all saved bytes = {r['topk_no_grad_over_lora_all']:.3f} (K/L = {r['k_over_l']:.3f})"
        )
    for mode, e in report.get("estimate", {}).items():
        if isinstance(e, dict) and "measured_over_estimated" in e:
            lines.append(
                f"{mode}: top-K blocks measured {mib(e['top_k_measured_bytes']):.2f} MiB, estimated "
                f"{mib(e['top_k_expected_bytes']):.2f} MiB (measured/estimated {e['measured_over_estimated']:.3f})"
            )
    if "fed_from" in modes.get("topk_cached", {}):
        lines.append(f"topk_cached fed from: {modes['topk_cached']['fed_from']}")
    return "\n".join(lines)


def _measured(report: dict) -> dict[str, dict]:
    return {k: v for k, v in report["modes"].items() if "saved_bytes_by_block" in v}


def saved_bytes_figure(report: dict) -> Figure:
    """Left: saved MiB per block, one bar per mode. Right: each mode's total, split into frozen prefix /
    top-K blocks / the rest, with the analytic estimate of the top K where there is one."""
    modes = _measured(report)
    blocks = block_keys(report["model"]["num_layers"])
    first_trainable_block = report["model"]["first_trainable_block"]
    fig, (ax, ax2) = plt.subplots(
        1,
        2,
        figsize=(max(10, 0.8 * len(blocks) + 5), 5.0),
        gridspec_kw={"width_ratios": [max(3, len(blocks) / 3), 1.6]},
    )
    width = 0.8 / max(len(modes), 1)
    for i, (name, m) in enumerate(modes.items()):
        ax.bar(
            [j + i * width for j in range(len(blocks))],
            [mib(m["saved_bytes_by_block"].get(b, 0)) for b in blocks],
            width,
            label=name,
            color=f"C{i}",
        )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(blocks))], blocks, rotation=45, ha="right")
    if first_trainable_block > 0:
        ax.axvspan(0.6, first_trainable_block + 0.6, color="grey", alpha=0.12, label="frozen prefix")
    ax.set_ylabel("MiB saved for backward")
    ax.set_title(f"per block (batch {report['batch']['batch_size']}×{report['batch']['length']} tokens)", fontsize=10)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
    prefix, trainable = set(prefix_keys(report)), {f"layer.{i}" for i in report["model"]["trainable_layers"]}
    names = list(modes)
    parts = {
        "frozen prefix": lambda b: b in prefix,
        "top-K blocks": lambda b: b in trainable,
        "embed / other blocks / norm / score": lambda b: b not in prefix and b not in trainable,
    }
    bottom = np.zeros(len(names))
    for (label, pick), color in zip(parts.items(), ("#9e9e9e", "#1f77b4", "#ffbb78"), strict=True):
        vals = np.array([mib(sum(v for b, v in modes[n]["saved_bytes_by_block"].items() if pick(b))) for n in names])
        ax2.bar(range(len(names)), vals, bottom=bottom, color=color, label=label)
        bottom += vals
    for i, n in enumerate(names):
        e = report.get("estimate", {}).get(n)
        if e:
            ax2.plot(
                [i - 0.4, i + 0.4],
                [mib(e["top_k_expected_bytes"])] * 2,
                color="k",
                lw=1.5,
                label="estimate (top K)" if "estimate (top K)" not in ax2.get_legend_handles_labels()[1] else None,
            )
    ax2.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax2.set_ylabel("MiB")
    ax2.set_title("total per mode", fontsize=10)
    ax2.set_ylim(0, max(bottom.max(), 1e-9) * 1.55)  # headroom for the legend
    ax2.legend(fontsize=7, loc="upper right")
    fig.suptitle("activations saved for backward")
    fig.tight_layout()
    return fig


ROLE_COLORS = {
    "trained in full": "#d62728",
    "LoRA": "#ff7f0e",
    "head": "#e377c2",
    "frozen": "#c6dbef",
    "cached (not run)": "#e0e0e0",
}


def block_role(report: dict, mode: str, block: str) -> str:
    """``trained in full`` / ``LoRA`` / ``head`` / ``frozen`` / ``cached (not run)`` of ``block`` in ``mode``."""
    if mode == "full":
        return "trained in full"
    if block == "score":
        return "head"
    adapted = list(range(report["model"]["num_layers"])) if mode == "lora_all" else report["model"]["trainable_layers"]
    if block.startswith("layer.") and int(block.split(".")[1]) in adapted:
        return "LoRA"
    if mode == "topk_cached" and (block == "embed" or block in prefix_keys(report)):
        return "cached (not run)"
    return "frozen"


def block_diagram_figure(report: dict) -> Figure:
    """The model as a column of blocks per mode: role (colour) and whether the block is in the graph
    (nodes or saved bytes charged to it; hatched and outlined when in the graph)."""
    modes = _measured(report)
    rows = list(reversed(block_keys(report["model"]["num_layers"])))  # score on top, embed at the bottom
    fig, ax = plt.subplots(figsize=(1.9 * len(modes) + 2.2, 0.42 * len(rows) + 1.8))
    for x, (name, m) in enumerate(modes.items()):
        for y, b in enumerate(reversed(rows)):
            role = block_role(report, name, b)
            in_graph = m["saved_bytes_by_block"].get(b, 0) > 0 or m["autograd_nodes_by_block"].get(b, 0) > 0
            ax.add_patch(
                plt.Rectangle(
                    (x * 1.9, y),
                    1.75,
                    0.85,
                    facecolor=ROLE_COLORS[role],
                    edgecolor="k" if in_graph else "none",
                    hatch="//" if in_graph else None,
                    linewidth=1.2,
                )
            )
            ax.text(
                x * 1.9 + 0.875,
                y + 0.42,
                human(m["saved_bytes_by_block"].get(b, 0)) if in_graph else "—",
                ha="center",
                va="center",
                fontsize=7,
                bbox={"facecolor": "white", "alpha": 0.7, "pad": 0.5, "lw": 0} if in_graph else None,
            )
        ax.text(
            x * 1.9 + 0.875,
            len(rows) + 0.15,
            name.replace("topk_", "top-K\n").replace("_", " "),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    for y, b in enumerate(reversed(rows)):
        ax.text(-0.15, y + 0.42, b, ha="right", va="center", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c, label=r) for r, c in ROLE_COLORS.items()]
    handles.append(
        plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="k", hatch="//", label="in the graph (bytes saved)")
    )
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=3, fontsize=7, frameon=False)
    ax.set_xlim(-1.4, 1.9 * len(modes))
    ax.set_ylim(-0.2, len(rows) + 1.1)
    ax.axis("off")
    ax.set_title("block roles and graph membership per mode", fontsize=10)
    fig.tight_layout()
    return fig


def metrics_of(report: dict) -> dict[str, float]:
    """Flat totals for MLflow: ``<mode>.saved_bytes``, ``<mode>.autograd_nodes``, ``<mode>.prefix_saved_bytes``, …"""
    out: dict[str, float] = {}
    for name, m in report["modes"].items():
        if "saved_bytes_total" not in m:
            continue
        out.update(
            {
                f"{name}.saved_bytes": m["saved_bytes_total"],
                f"{name}.prefix_saved_bytes": m["prefix_saved_bytes"],
                f"{name}.autograd_nodes": m["autograd_nodes"],
                f"{name}.step_seconds": m["step_seconds"],
            }
        )
        if m["cuda_peak_bytes"] is not None:
            out[f"{name}.cuda_peak_bytes"] = m["cuda_peak_bytes"]
    for mode, e in report.get("estimate", {}).items():
        if isinstance(e, dict) and "measured_over_estimated" in e:
            out[f"{mode}.measured_over_estimated"] = e["measured_over_estimated"]
    out.update({f"ratio.{k}": v for k, v in report.get("ratios", {}).items()})
    return out
