"""The probe's figure: its value by block (validation and train), the recommended forward split marked."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures are written to files, never shown

import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def probe_figure(report: dict) -> Figure:
    """``report`` is :func:`toptune.probe.run.run_probe`'s: the value by block, the boundary between the
    frozen prefix (blocks ``0..b*``) and the recommended top K blocks shaded."""
    layers = report["layers"]
    blocks = [row["block"] for row in layers]
    k, n = report["recommended_trainable_layers"], report["num_blocks"]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.25 * n + 3), 3.8))
    ax.plot(blocks, [row["value"] for row in layers], "o-", label=f"val {report['metric']}")
    ax.plot(
        blocks,
        [row["train_value"] for row in layers],
        "s--",
        color="tab:gray",
        alpha=0.6,
        label=f"train {report['metric']}",
    )
    cut = report["best_value"] - report["tolerance"]
    ax.axhline(cut, color="tab:blue", linestyle=":", linewidth=1, label=f"best − tolerance ({cut:.3f})")
    ax.axvspan(n - k - 0.5, n - 0.5, color="tab:orange", alpha=0.15, label=f"recommended K = {k} (trainable)")
    ax.axvline(n - k - 0.5, color="tab:orange", linestyle="--")
    ax.set_xlabel("block (its output, at the pooled token)")
    ax.set_ylabel(report["metric"])
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_title(f"linear probe per block ({report['rows']['train']} train / {report['rows']['val']} val rows)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
