"""The evaluation of each kind of head: calibration (temperature scaling, ECE, per-class thresholds), the
multi-label and regression metrics, their flat dicts and reports, and the figures.

Real computations on seeded synthetic data, checked against hand-computed values, scikit-learn called
directly, or numpy formulas.
"""

from __future__ import annotations

import math
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, hamming_loss

from toptune.evaluate.calibration import (
    expected_calibration_error,
    fit_temperature,
    nll,
    probabilities,
    reliability_figure,
    tune_thresholds,
)
from toptune.evaluate.metrics import (
    classification_metrics,
    flat_metrics,
    flat_metrics_of,
    multilabel_metrics,
    multilabel_report_text,
    regression_metrics,
    regression_report_text,
)
from toptune.evaluate.plots import pr_curves_figure, regression_figure

SINGLE = "single_label_classification"
MULTI = "multi_label_classification"
OVERCONFIDENT = 5.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def single() -> tuple[np.ndarray, np.ndarray]:
    """Well-calibrated (4000, 4) logits and labels drawn from their own softmax."""
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 1.5, size=(4000, 4))
    p = _softmax(z)
    labels = np.array([rng.choice(4, p=row) for row in p])
    return z.astype(np.float32), labels


@pytest.fixture(scope="module")
def multi() -> tuple[np.ndarray, np.ndarray]:
    """Well-calibrated (3000, 5) logits and multi-hot labels drawn from their own sigmoid."""
    rng = np.random.default_rng(1)
    z = rng.normal(-0.5, 1.5, size=(3000, 5))
    labels = (rng.random(z.shape) < _sigmoid(z)).astype(np.int64)
    return z.astype(np.float32), labels


# ---- nll / probabilities -------------------------------------------------------------------------------------


def test_nll_matches_numpy(single: tuple[np.ndarray, np.ndarray], multi: tuple[np.ndarray, np.ndarray]) -> None:
    z, y = single
    t = 1.7
    logp = np.log(_softmax(z.astype(np.float64) / t))
    assert nll(z, y, SINGLE, t) == pytest.approx(-logp[np.arange(len(y)), y].mean(), rel=1e-6)
    zm, ym = multi
    q = _sigmoid(zm.astype(np.float64) / t)
    bce = -(ym * np.log(q) + (1 - ym) * np.log(1 - q)).mean()
    assert nll(zm, ym, MULTI, t) == pytest.approx(bce, rel=1e-6)
    with pytest.raises(ValueError, match="regression"):
        nll(z, y, "regression")


def test_probabilities(single: tuple[np.ndarray, np.ndarray], multi: tuple[np.ndarray, np.ndarray]) -> None:
    z, _ = single
    p = probabilities(z, SINGLE, 2.0)
    assert p.dtype == np.float32 and p.shape == z.shape
    np.testing.assert_allclose(p, _softmax(z.astype(np.float64) / 2.0), atol=1e-6)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    zm, _ = multi
    q = probabilities(zm, MULTI)
    assert q.dtype == np.float32 and q.shape == zm.shape
    np.testing.assert_allclose(q, _sigmoid(zm.astype(np.float64)), atol=1e-6)


# ---- fit_temperature -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [SINGLE, MULTI])
def test_fit_temperature_undoes_overconfidence(
    kind: str, single: tuple[np.ndarray, np.ndarray], multi: tuple[np.ndarray, np.ndarray]
) -> None:
    z, y = single if kind == SINGLE else multi
    logits = OVERCONFIDENT * z
    t = fit_temperature(logits, y, kind)
    assert 4.0 < t < 6.25  # the true T is 5; the sampling noise of a few thousand rows moves it a little
    assert nll(logits, y, kind, t) < nll(logits, y, kind) - 0.1
    # On the well-calibrated logits themselves the fit stays near 1 and never raises the NLL.
    t1 = fit_temperature(z, y, kind)
    assert 0.8 < t1 < 1.25
    assert nll(z, y, kind, t1) <= nll(z, y, kind)


def test_fit_temperature_edges(single: tuple[np.ndarray, np.ndarray]) -> None:
    assert fit_temperature(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), SINGLE) == 1.0
    assert fit_temperature(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), MULTI) == 1.0
    z, y = single
    with pytest.raises(ValueError):
        fit_temperature(z, y, "regression")
    rng = np.random.default_rng(2)
    # Logits that know nothing of the labels: the optimum flattens them (T → ∞), clamped to 20.
    noise = rng.normal(0, 3, size=z.shape).astype(np.float32)
    t = fit_temperature(noise, y, SINGLE)
    assert t == pytest.approx(20.0)
    assert nll(noise, y, SINGLE, t) <= nll(noise, y, SINGLE)
    # Faint logits that are always right: the optimum sharpens them (T → 0), clamped to 0.05.
    faint = 0.01 * np.eye(4, dtype=np.float32)[y]
    t = fit_temperature(faint, y, SINGLE)
    assert t == pytest.approx(0.05)
    assert nll(faint, y, SINGLE, t) <= nll(faint, y, SINGLE)


# ---- expected_calibration_error ------------------------------------------------------------------------------


def test_ece_zero_when_calibrated() -> None:
    # Every row 0.8 confident, 8 of 10 right.
    probs = np.tile(np.array([[0.8, 0.2]], np.float32), (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, labels, SINGLE) == pytest.approx(0.0, abs=1e-6)
    # Multi-label: entries of 0.3 with 3 of 10 positive, entries of 0.9 with 9 of 10 positive.
    probs_m = np.tile(np.array([[0.3, 0.9]], np.float32), (10, 1))
    labels_m = np.stack([np.arange(10) < 3, np.arange(10) < 9], axis=1).astype(np.int64)
    assert expected_calibration_error(probs_m, labels_m, MULTI) == pytest.approx(0.0, abs=1e-6)


def test_ece_hand_computed() -> None:
    # 15 bins of width 1/15; no value on a bin edge. Bins: 0.9 (two rows, one right) → |0.5 − 0.9| · 2/4,
    # 0.62 (right) → |1 − 0.62| · 1/4, 0.35 (right) → |1 − 0.35| · 1/4.
    probs = np.array([[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.62, 0.3, 0.08], [0.35, 0.33, 0.32]], np.float32)
    labels = np.array([0, 0, 0, 0])
    expected = 0.4 * 2 / 4 + 0.38 / 4 + 0.65 / 4
    assert expected_calibration_error(probs, labels, SINGLE) == pytest.approx(expected, abs=1e-6)
    # Multi-label entries 0.1 (0), 0.1 (1), 0.9 (1), 0.7 (1): |0.5 − 0.1| · 2/4 + |1 − 0.9|/4 + |1 − 0.7|/4.
    probs_m = np.array([[0.1, 0.9], [0.1, 0.7]], np.float32)
    labels_m = np.array([[0, 1], [1, 1]])
    assert expected_calibration_error(probs_m, labels_m, MULTI) == pytest.approx(0.2 + 0.025 + 0.075, abs=1e-6)
    assert expected_calibration_error(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), SINGLE) == 0.0
    assert expected_calibration_error(np.zeros((0, 3), np.float32), np.zeros((0, 3)), MULTI) == 0.0


@pytest.mark.parametrize("kind", [SINGLE, MULTI])
def test_ece_lower_after_scaling(
    kind: str, single: tuple[np.ndarray, np.ndarray], multi: tuple[np.ndarray, np.ndarray]
) -> None:
    z, y = single if kind == SINGLE else multi
    logits = OVERCONFIDENT * z
    t = fit_temperature(logits, y, kind)
    before = expected_calibration_error(probabilities(logits, kind), y, kind)
    after = expected_calibration_error(probabilities(logits, kind, t), y, kind)
    assert before > 0.1
    assert after < 0.05
    assert after < before / 3


# ---- tune_thresholds -----------------------------------------------------------------------------------------


def test_tune_thresholds_hand_made() -> None:
    probs = np.array(
        [
            [0.9, 0.6, 0.9, 0.3],
            [0.8, 0.55, 0.8, 0.2],
            [0.3, 0.4, 0.7, 0.7],
            [0.2, 0.7, 0.2, 0.6],
            [0.1, 0.2, 0.1, 0.1],
        ],
        np.float32,
    )
    labels = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    t = tune_thresholds(probs, labels)
    assert len(t) == 4 and all(isinstance(v, float) for v in t)
    assert t[0] == pytest.approx(0.3)  # every positive and no negative at >= 0.3: F1 = 1
    assert t[1] == pytest.approx(0.7)  # the one positive is the top score
    # Class 2: F1 = 2/3 both at 0.9 (P 1, R 1/2) and at 0.2 (P 1/2, R 1): the tie goes to the larger one.
    assert t[2] == pytest.approx(0.9)
    assert t[3] == 0.5  # no positive row
    assert tune_thresholds(np.zeros((0, 3), np.float32), np.zeros((0, 3))) == [0.5, 0.5, 0.5]


def test_tuned_f1_at_least_default(multi: tuple[np.ndarray, np.ndarray]) -> None:
    z, y = multi
    probs = probabilities(1.5 * z - 1.0, MULTI)  # miscalibrated, so 0.5 is not the best cut
    t = tune_thresholds(probs, y)
    for c in range(y.shape[1]):
        tuned = f1_score(y[:, c], probs[:, c] >= t[c], zero_division=0)
        default = f1_score(y[:, c], probs[:, c] >= 0.5, zero_division=0)
        assert tuned >= default - 1e-12
    assert sum(f1_score(y[:, c], probs[:, c] >= t[c]) for c in range(y.shape[1])) > sum(
        f1_score(y[:, c], probs[:, c] >= 0.5) for c in range(y.shape[1])
    )


# ---- multilabel_metrics --------------------------------------------------------------------------------------

ID2LABEL_M = {0: "sports", 1: "politics", 2: "tech"}
PROBS_M = np.array([[0.9, 0.2, 0.1], [0.4, 0.8, 0.3], [0.7, 0.6, 0.2], [0.1, 0.3, 0.05], [0.65, 0.1, 0.4]], np.float32)
LABELS_M = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]])  # "tech": no positive
THRESHOLDS_M = [0.5, 0.55, 0.35]


def test_multilabel_metrics_match_sklearn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = multilabel_metrics(PROBS_M, LABELS_M, THRESHOLDS_M, ID2LABEL_M)
    pred = (PROBS_M >= np.array(THRESHOLDS_M)).astype(int)
    assert m["micro_f1"] == pytest.approx(f1_score(LABELS_M, pred, average="micro", zero_division=0))
    assert m["macro_f1"] == pytest.approx(f1_score(LABELS_M, pred, average="macro", zero_division=0))
    assert m["subset_accuracy"] == pytest.approx(accuracy_score(LABELS_M, pred))
    assert m["hamming_loss"] == pytest.approx(hamming_loss(LABELS_M, pred))
    # By hand: predictions [[1,0,0],[0,1,0],[1,1,0],[0,0,0],[1,0,1]]; 1 of 5 rows exactly right, 5 of 15 wrong.
    assert m["subset_accuracy"] == pytest.approx(1 / 5)
    assert m["hamming_loss"] == pytest.approx(5 / 15)
    assert m["n_examples"] == 5
    assert list(m["per_class"]) == ["sports", "politics", "tech"]
    for c, name in enumerate(ID2LABEL_M.values()):
        pc = m["per_class"][name]
        assert set(pc) == {"precision", "recall", "f1-score", "support", "average_precision", "threshold"}
        assert pc["threshold"] == pytest.approx(THRESHOLDS_M[c])
        assert pc["support"] == LABELS_M[:, c].sum()
        assert pc["f1-score"] == pytest.approx(f1_score(LABELS_M[:, c], pred[:, c], zero_division=0))
    assert m["per_class"]["sports"]["average_precision"] == pytest.approx(
        average_precision_score(LABELS_M[:, 0], PROBS_M[:, 0])
    )
    assert m["per_class"]["tech"]["average_precision"] == 0.0
    assert m["per_class"]["sports"]["precision"] == pytest.approx(2 / 3)  # rows 0, 2 right; row 4 wrong
    assert m["per_class"]["sports"]["recall"] == pytest.approx(2 / 3)  # row 1 missed


def test_multilabel_report_text() -> None:
    text = multilabel_report_text(PROBS_M, LABELS_M, THRESHOLDS_M, ID2LABEL_M)
    for name in ID2LABEL_M.values():
        assert name in text
    assert "micro avg" in text and "samples avg" in text
    assert "threshold" in text and "average_precision" in text
    assert "0.5500" in text  # politics' threshold, 4 digits


# ---- regression_metrics --------------------------------------------------------------------------------------


def test_regression_perfect_and_constant() -> None:
    target = np.linspace(-2, 5, 50)
    m = regression_metrics(target.copy(), target)
    assert m["rmse"] == pytest.approx(0.0, abs=1e-12) and m["mae"] == pytest.approx(0.0, abs=1e-12)
    assert m["r2"] == pytest.approx(1.0) and m["spearman"] == pytest.approx(1.0)
    assert m["pearson"] == pytest.approx(1.0) and m["n_examples"] == 50
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = regression_metrics(np.full(50, 1.5), target)
        one = regression_metrics(np.array([1.0]), np.array([2.0]))
        empty = regression_metrics(np.zeros(0), np.zeros(0))
    assert c["spearman"] == 0.0 and c["pearson"] == 0.0
    assert all(math.isfinite(v) for v in c.values())
    assert one["r2"] == 0.0 and one["spearman"] == 0.0 and one["rmse"] == pytest.approx(1.0)
    assert empty["n_examples"] == 0 and empty["rmse"] == 0.0


def test_regression_against_numpy() -> None:
    rng = np.random.default_rng(3)
    target = rng.normal(3.0, 2.0, 200)
    pred = (target + rng.normal(0, 1.0, 200)).astype(np.float32)
    m = regression_metrics(pred, target)
    err = pred.astype(np.float64) - target
    assert m["rmse"] == pytest.approx(np.sqrt((err**2).mean()), rel=1e-9)
    assert m["mae"] == pytest.approx(np.abs(err).mean(), rel=1e-9)
    r2 = 1 - (err**2).sum() / ((target - target.mean()) ** 2).sum()
    assert m["r2"] == pytest.approx(r2, rel=1e-9)
    assert m["pearson"] == pytest.approx(np.corrcoef(pred, target)[0, 1], rel=1e-6)
    # Continuous draws have no ties: Spearman is the Pearson correlation of the ranks.
    rank_p, rank_t = (np.argsort(np.argsort(v)).astype(np.float64) for v in (pred, target))
    assert m["spearman"] == pytest.approx(np.corrcoef(rank_p, rank_t)[0, 1], rel=1e-9)
    text = regression_report_text(pred, target)
    for k in ("rmse", "mae", "r2", "spearman", "pearson", "n_examples"):
        assert k in text
    assert f"{m['rmse']:.4f}" in text and "200" in text


# ---- flat_metrics_of -----------------------------------------------------------------------------------------


def test_flat_metrics_of_each_kind() -> None:
    id2label = {0: "neg", 1: "pos", 2: "mixed"}
    logits = np.array([[2.0, 0.1, 0.3], [0.1, 1.0, 0.2], [0.2, 0.1, 3.0], [1.0, 2.0, 0.0]], np.float32)
    cm = classification_metrics(logits, np.array([0, 1, 2, 0]), id2label)
    assert flat_metrics_of(cm) == flat_metrics(cm)
    assert list(flat_metrics_of(cm)) == list(flat_metrics(cm))  # same order too
    assert list(flat_metrics(cm))[:5] == ["accuracy", "macro_f1", "precision_neg", "recall_neg", "f1_neg"]

    mm = flat_metrics_of(multilabel_metrics(PROBS_M, LABELS_M, THRESHOLDS_M, ID2LABEL_M))
    expected = {"micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"}
    for name in ID2LABEL_M.values():
        expected |= {f"{p}_{name}" for p in ("precision", "recall", "f1", "average_precision", "threshold")}
    assert set(mm) == expected
    assert mm["threshold_politics"] == pytest.approx(0.55)
    assert all(isinstance(v, float) for v in mm.values())

    rm = flat_metrics_of(regression_metrics(np.array([1.0, 2.0, 3.5]), np.array([1.0, 2.5, 3.0])))
    assert set(rm) == {"rmse", "mae", "r2", "spearman", "pearson"}
    assert all(isinstance(v, float) for v in rm.values())


# ---- figures -------------------------------------------------------------------------------------------------


def _closes(fig: Figure) -> None:
    num = fig.number
    assert num in plt.get_fignums()
    plt.close(fig)
    assert num not in plt.get_fignums()


@pytest.mark.parametrize("kind", [SINGLE, MULTI])
def test_reliability_figure(
    kind: str, single: tuple[np.ndarray, np.ndarray], multi: tuple[np.ndarray, np.ndarray]
) -> None:
    z, y = single if kind == SINGLE else multi
    logits = OVERCONFIDENT * z
    t = fit_temperature(logits, y, kind)
    fig = reliability_figure(probabilities(logits, kind, t), y, kind, before=probabilities(logits, kind))
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 3  # diagonal, calibrated, uncalibrated
    legend_box = ax.get_legend()
    assert legend_box is not None
    legend = [tx.get_text() for tx in legend_box.get_texts()]
    assert sum("ECE=" in tx for tx in legend) == 2
    _closes(fig)
    fig = reliability_figure(probabilities(z, kind), y, kind, bins=10)
    assert len(fig.axes) == 1 and len(fig.axes[0].get_lines()) == 2
    _closes(fig)


def test_pr_curves_figure_many_classes() -> None:
    rng = np.random.default_rng(4)
    n, c = 300, 32
    labels = (rng.random((n, c)) < 0.15).astype(np.int64)
    labels[:, 7] = 0  # a class with no positive: a panel saying so, no curve
    probs = np.clip(0.3 * labels + rng.random((n, c)) * 0.7, 0, 1).astype(np.float32)
    id2label = {i: f"tag{i}" for i in range(c)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = pr_curves_figure(probs, labels, id2label)
    assert isinstance(fig, Figure) and len(fig.axes) == c
    lines = [len(ax.get_lines()) for ax in fig.axes]
    assert lines[7] == 0 and all(k == 1 for i, k in enumerate(lines) if i != 7)
    first = fig.axes[0].get_legend()
    assert first is not None and first.get_texts()[0].get_text().startswith("AP=")
    _closes(fig)
    # Single-label labels (N,) are drawn one-vs-rest.
    fig = pr_curves_figure(probs[:, :3], rng.integers(0, 3, n), {0: "a", 1: "b", 2: "c"})
    assert len(fig.axes) == 3 and all(len(ax.get_lines()) == 1 for ax in fig.axes)
    _closes(fig)


def test_regression_figure() -> None:
    rng = np.random.default_rng(5)
    target = rng.normal(0, 1, 120)
    fig = regression_figure(target + rng.normal(0, 0.3, 120), target)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    scatter, hist = fig.axes
    assert len(scatter.collections) == 1 and len(scatter.get_lines()) == 1  # the points and y = x
    assert len(hist.patches) > 0
    _closes(fig)
