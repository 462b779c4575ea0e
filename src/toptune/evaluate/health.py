"""Warnings about a run that finished but learnt nothing worth keeping.

Each check reads what the run already produced (tokenised splits, the training summary) and returns
``{tag: message}``: the Kedro layer logs each message as a warning and sets it as an MLflow tag
``warning.<tag>``, so a run that "succeeded" on texts cut to one token, or whose loss blew up, says so.
"""

from __future__ import annotations

import math

import numpy as np


def short_text_warnings(
    split_sizes: dict[str, tuple[int, int]], max_length: int, min_text_tokens: int, share: float
) -> dict[str, str]:
    """``split_sizes``: split → (rows, rows truncated). A truncated text keeps exactly ``max_length``
    tokens, so when ``max_length < min_text_tokens`` every truncated row is near-empty."""
    if max_length >= min_text_tokens:
        return {}
    rows = sum(n for n, _ in split_sizes.values())
    short = sum(t for _, t in split_sizes.values())
    if not rows or short / rows <= share:
        return {}
    return {
        "short_texts": f"{short} of {rows} texts are cut to {max_length} token(s) by training.max_length={max_length} "
        f"(< data.min_text_tokens={min_text_tokens}): the model sees almost nothing of them"
    }


DROPPED_SHARE = 0.05
"""Share of the table's rows dropped for one reason above which the run warns (``warning.rows_dropped``)."""


def dropped_rows_warnings(quality: dict[str, int], share: float = DROPPED_SHARE) -> dict[str, str]:
    """One warning naming every reason that dropped more than ``share`` of the rows read (the
    ``data.sample_rows`` cap is asked for, not a loss: it is not counted)."""
    rows = quality.get("rows_in", 0)
    big = {
        k.removeprefix("dropped_"): n
        for k, n in quality.items()
        if k.startswith("dropped_") and k != "dropped_sample_rows" and rows and n / rows > share
    }
    if not big:
        return {}
    parts = ", ".join(f"{reason} {n} ({n / rows:.1%})" for reason, n in sorted(big.items(), key=lambda x: -x[1]))
    return {"rows_dropped": f"{parts} of {rows} rows were dropped (data.dropped_<reason>): check the table"}


def chance_accuracy(accuracy: float, labels: np.ndarray) -> str | None:
    """A message when ``accuracy`` on ``labels`` is within two standard errors of always answering the
    majority class (the best a model that learnt nothing does), else None."""
    n = len(labels)
    if n == 0 or not math.isfinite(accuracy):
        return None if n == 0 else f"accuracy is {accuracy}"
    majority = float(np.bincount(np.asarray(labels)).max() / n)
    margin = 2 * math.sqrt(max(majority * (1 - majority), 1e-12) / n)
    if accuracy > majority + margin:
        return None
    return (
        f"validation accuracy {accuracy:.3f} on {n} rows is at chance (the majority class alone scores "
        f"{majority:.3f}, ±{margin:.3f}): the model learnt nothing usable"
    )


def diverged(losses: list[float], n_classes: int) -> str | None:
    """A message when the training loss is not finite or ends far above where it started (or above the
    loss of a uniform guess, ln C), else None."""
    if not losses:
        return None
    if not all(math.isfinite(x) for x in losses):
        return "the training loss became NaN or infinite: lower training.lr"
    start = max(losses[0], math.log(max(n_classes, 2)))
    if losses[-1] > 2 * start:
        return f"the training loss diverged ({losses[0]:.3g} → {losses[-1]:.3g}): lower training.lr"
    return None


def training_warnings(summary: dict, val_labels: np.ndarray, n_classes: int) -> dict[str, str]:
    """Chance accuracy on the last epoch's validation split and a diverged loss, from the train node's
    summary (``epochs``: per-epoch ``val_accuracy``; ``steps``: logged ``loss``)."""
    out = {}
    epochs = summary.get("epochs") or []
    if epochs and "val_accuracy" in epochs[-1]:
        msg = chance_accuracy(float(epochs[-1]["val_accuracy"]), val_labels)
        if msg:
            out["chance_accuracy"] = msg
    losses = [float(s["loss"]) for s in summary.get("steps") or []]
    msg = diverged(losses, n_classes)
    if msg:
        out["loss_diverged"] = msg
    return out
