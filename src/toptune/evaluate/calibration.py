"""Calibrated probabilities and decisions: temperature scaling, expected calibration error, per-class thresholds.

The shapes: ``logits`` / ``probs`` are (N, C) float32; ``labels`` are (N,) int class ids for
``"single_label_classification"`` and (N, C) multi-hot {0, 1} for ``"multi_label_classification"``.
Temperature scaling divides every logit by one scalar T fitted on the validation split, so it changes the
confidence of a prediction and never which class wins (single-label) nor the order of scores (multi-label).
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # headless: figures are written to files, never shown

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from scipy.stats import binned_statistic
from sklearn.metrics import precision_recall_curve

from toptune.task import MULTI, SINGLE, Task

# The fitted temperature is clamped: beyond these the logits are all but flattened or sharpened to one-hot,
# which on a small validation split is over-fitting the split rather than calibrating the model.
T_MIN, T_MAX = 0.05, 20.0


def _check_kind(problem_type: str) -> None:
    if problem_type not in (SINGLE, MULTI):
        raise ValueError(
            f"calibration needs problem_type {SINGLE!r} or {MULTI!r}, not {problem_type!r} "
            "(a regressor has no probabilities to calibrate)"
        )


def _nll_torch(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> torch.Tensor:
    """Mean NLL of already temperature-divided float64 ``logits``, in the numerically stable with-logits forms."""
    if problem_type == SINGLE:
        return F.cross_entropy(logits, labels)
    return F.binary_cross_entropy_with_logits(logits, labels)  # mean over all N×C entries


def _tensors(logits: np.ndarray, labels: np.ndarray, problem_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 logits and the labels in the dtype each loss wants: (N,) int64 or (N, C) float64."""
    x = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64 if problem_type == SINGLE else torch.float64)
    return x, y


def nll(logits: np.ndarray, labels: np.ndarray, problem_type: str, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``logits / temperature``.

    Single-label: cross-entropy of the softmax with ``labels`` (N,) int. Multi-label: binary cross-entropy of
    the sigmoid with ``labels`` (N, C) in {0, 1}, averaged over all N×C entries. 0.0 for no rows.
    """
    _check_kind(problem_type)
    x, y = _tensors(logits, labels, problem_type)
    if x.shape[0] == 0:
        return 0.0
    with torch.no_grad():
        return float(_nll_torch(x / temperature, y, problem_type))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, problem_type: str) -> float:
    """The scalar T > 0 minimising ``nll(logits, labels, problem_type, T)`` on these (validation) rows.

    LBFGS (strong Wolfe line search, float64) on log T, so T stays positive without a constraint, from T = 1;
    the result is clamped to [0.05, 20]. 1.0 for an empty split, and 1.0 whenever the fitted T would not
    lower the NLL below its value at T = 1 (a failed or degenerate fit must never make things worse).
    Raises ValueError for ``"regression"``.
    """
    _check_kind(problem_type)
    x, y = _tensors(logits, labels, problem_type)
    if x.shape[0] == 0:
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _nll_torch(x / log_t.exp(), y, problem_type)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t):
        return 1.0
    t = min(max(t, T_MIN), T_MAX)
    if nll(logits, labels, problem_type, t) >= nll(logits, labels, problem_type, 1.0):
        return 1.0
    return t


def probabilities(logits: np.ndarray, problem_type: str, temperature: float = 1.0) -> np.ndarray:
    """(N, C) float32: softmax(logits / T) for single-label, sigmoid(logits / T) for multi-label."""
    _check_kind(problem_type)
    return Task(problem_type, temperature=temperature).probabilities(logits)  # what predict and serve apply


def _predictions(probs: np.ndarray, labels: np.ndarray, problem_type: str) -> tuple[np.ndarray, np.ndarray]:
    """(M,) confidence and (M,) 0/1 outcome of each prediction the calibration is judged on.

    Single-label: one per row, the top-label confidence and whether the argmax is the label (M = N).
    Multi-label: every (row, class) entry, its probability and its 0/1 label (M = N × C).
    """
    _check_kind(problem_type)
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if problem_type == SINGLE:
        if probs.shape[0] == 0:
            return np.zeros(0), np.zeros(0)
        return probs.max(-1), (probs.argmax(-1) == labels).astype(np.float64)
    return probs.ravel(), labels.astype(np.float64).ravel()


def _bin_stats(conf: np.ndarray, outcome: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin on [0, 1]: (bins,) count, sum of confidence, sum of outcome.

    scipy's bins are [lo, hi) with the last one closed, so a confidence of exactly 1.0 falls in the top bin.
    """
    if conf.size == 0:
        return np.zeros(bins), np.zeros(bins), np.zeros(bins)
    sums, _, _ = binned_statistic(conf, [conf, outcome], statistic="sum", bins=bins, range=(0.0, 1.0))
    count, _, _ = binned_statistic(conf, conf, statistic="count", bins=bins, range=(0.0, 1.0))
    return count, sums[0], sums[1]


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, problem_type: str, bins: int = 15) -> float:
    """ECE over ``bins`` equal-width bins on [0, 1]: Σ_b |mean outcome_b − mean confidence_b| · n_b / total.

    ``probs`` (N, C) float32. Single-label: the standard top-label ECE (confidence = max probability,
    outcome = argmax == label, ``labels`` (N,) int). Multi-label: every (row, class) entry is one prediction,
    its probability against its 0/1 label (``labels`` (N, C)). 0.0 for an empty input.
    """
    conf, outcome = _predictions(probs, labels, problem_type)
    if conf.size == 0:
        return 0.0
    _, conf_sum, out_sum = _bin_stats(conf, outcome, bins)
    # |acc_b − conf_b| · n_b is |Σ outcome − Σ confidence| in the bin: no division by an empty bin's count.
    return float(np.abs(out_sum - conf_sum).sum() / conf.size)


def tune_thresholds(probs: np.ndarray, labels: np.ndarray) -> list[float]:
    """Multi-label: per class c, the threshold on ``probs[:, c]`` that maximises that class's F1 on these rows.

    ``probs`` (N, C) float32, ``labels`` (N, C) in {0, 1}; a row is predicted positive for c when
    ``probs[:, c] >= threshold``. The candidates are the class's distinct probability values
    (scikit-learn's ``precision_recall_curve``); between equal F1 (within 1e-12) the largest threshold wins,
    the one predicting fewest positives. A class with no positive row (or no rows at all) keeps 0.5.
    Returns C floats.
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    out: list[float] = []
    for c in range(probs.shape[1]):
        y = labels[:, c]
        if y.size == 0 or not y.any():
            out.append(0.5)
            continue
        precision, recall, thresholds = precision_recall_curve(y, probs[:, c])
        # The last (precision 1, recall 0) point has no threshold; point i predicts `probs >= thresholds[i]`.
        p, r = precision[: len(thresholds)], recall[: len(thresholds)]
        f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        out.append(float(thresholds[best].max()))
    return out


def _curve(conf: np.ndarray, outcome: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(K,) mean confidence and (K,) mean outcome of the K non-empty bins."""
    count, conf_sum, out_sum = _bin_stats(conf, outcome, bins)
    keep = count > 0
    return conf_sum[keep] / count[keep], out_sum[keep] / count[keep]


def reliability_figure(
    probs: np.ndarray,
    labels: np.ndarray,
    problem_type: str,
    bins: int = 15,
    before: np.ndarray | None = None,
) -> Figure:
    """Reliability diagram on one axis: per non-empty bin, accuracy (single-label) or positive rate
    (multi-label) against mean confidence, with the diagonal of perfect calibration.

    ``probs`` (N, C) float32 are drawn as one line ("calibrated" when ``before`` is given, else "model");
    ``before`` (N, C), the uncalibrated probabilities of the same rows, as a second, dashed line. Each curve's
    ECE is in the legend. Lines: the diagonal, then ``probs``, then ``before`` (2 or 3).
    """
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    curves = [(probs, "calibrated" if before is not None else "model", "o-")]
    if before is not None:
        curves.append((before, "uncalibrated", "s--"))
    for p, name, style in curves:
        conf, outcome = _predictions(p, labels, problem_type)
        x, y = _curve(conf, outcome, bins)
        ece = expected_calibration_error(p, labels, problem_type, bins)
        ax.plot(x, y, style, label=f"{name} (ECE={ece:.4f})")
    single = problem_type == SINGLE
    ax.set_xlabel("mean confidence (top label)" if single else "mean predicted probability (every row × class)")
    ax.set_ylabel("accuracy" if single else "positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    n = int(np.asarray(labels).shape[0])
    ax.set_title(f"reliability ({bins} bins, n={n})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig
