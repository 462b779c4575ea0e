"""A linear probe per block (scikit-learn), and the K it recommends.

=============  ====================================================================  ===========================
kind           probe (fitted on the train rows' pooled vectors of one block)          value on the val rows
=============  ====================================================================  ===========================
single-label   StandardScaler → LogisticRegression (C = 1 / ``probe.regularization``)  ``macro_f1``
multi-label    StandardScaler → OneVsRestClassifier(LogisticRegression)              ``macro_f1``, 0.5 decisions
regression     StandardScaler → Ridge (alpha = ``probe.regularization``), the target   ``spearman``
               standardised (TransformedTargetRegressor)
=============  ====================================================================  ===========================

Every value is higher-is-better (spearman, not rmse: a rank correlation reads on the scale of the F1s, and
the tolerance means the same on any target's scale).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.compose import TransformedTargetRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import f1_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from toptune.config import ProbeConfig
from toptune.errors import DataValidationError
from toptune.evaluate.metrics import regression_metrics
from toptune.task import MULTI, REGRESSION, SINGLE

METRIC = {SINGLE: "macro_f1", MULTI: "macro_f1", REGRESSION: "spearman"}
"""The probe's value per kind (higher is better)."""

RULE = (
    "b* = the first block whose val value is within probe.tolerance of the best block's; "
    "K = max(1, num_blocks - 1 - b*): the frozen prefix ends with block b*, the top K blocks train"
)
"""The recommendation rule, as ``probe.json`` states it (:func:`recommend`)."""


def estimator(kind: str, cfg: ProbeConfig) -> BaseEstimator:
    """A fresh, unfitted probe for ``kind`` (see the module's table)."""
    if kind == REGRESSION:
        ridge = make_pipeline(StandardScaler(), Ridge(alpha=cfg.regularization))
        return TransformedTargetRegressor(regressor=ridge, transformer=StandardScaler())
    logistic = LogisticRegression(C=1.0 / cfg.regularization, max_iter=cfg.max_iter)
    return make_pipeline(StandardScaler(), OneVsRestClassifier(logistic) if kind == MULTI else logistic)


def score(kind: str, probe: BaseEstimator, x: np.ndarray, y: np.ndarray, classes: np.ndarray) -> float:
    """``kind``'s value (``METRIC``) of a fitted ``probe`` on vectors ``x`` (N, D) and stored labels ``y``."""
    pred = probe.predict(x)  # (N,) classes or values, (N, C) 0/1 at 0.5
    if kind == REGRESSION:
        return float(regression_metrics(pred, y)["spearman"])
    labels = classes if kind == SINGLE else None  # single-label: every class counts, as the test metrics do
    return float(f1_score(y, pred, labels=labels, average="macro", zero_division=0))


def probe_block(
    kind: str, cfg: ProbeConfig, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray]
) -> dict:
    """Fit one block's probe on ``train`` = (vectors (N, D), labels) and score it on ``val`` and ``train``."""
    (x, y), (xv, yv) = train, val
    classes = np.unique(np.concatenate([y, yv])) if kind == SINGLE else np.zeros(0)
    probe = estimator(kind, cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.filterwarnings("ignore", "Label not present", UserWarning)  # multi-label: a constant class
        probe.fit(x, y)
    return {
        "metric": METRIC[kind],
        "value": score(kind, probe, xv, yv, classes),
        "train_value": score(kind, probe, x, y, classes),
        "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
    }


def probe_blocks(
    kind: str,
    cfg: ProbeConfig,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    progress: bool = False,
) -> list[dict]:
    """One :func:`probe_block` per block: ``train`` and ``val`` hold (rows, blocks, hidden) vectors and labels."""
    (x, y), (xv, yv) = train, val
    if kind != REGRESSION and len(np.unique(y, axis=0)) < 2:
        raise DataValidationError(
            "probe: the training rows hold a single label value, nothing to separate; raise probe.max_rows"
        )
    blocks = range(x.shape[1])
    return [
        {"block": i, **probe_block(kind, cfg, (x[:, i], y), (xv[:, i], yv))}
        for i in tqdm(blocks, desc="probe fits", unit="block", disable=not progress)
    ]


def recommend(values: Sequence[float], tolerance: float) -> tuple[int, int]:
    """``(b*, K)`` from the val value of each block (block ``i``'s = ``values[i]``, higher is better).

    ``b*`` is the first block whose value is within ``tolerance`` of the best: the probe stops improving
    there, so a frozen prefix of blocks ``0..b*`` already holds (nearly) all the linearly readable
    information. Training the top K blocks makes blocks ``L-K..L-1`` trainable and feeds them block
    ``L-K-1``'s output; for that to be block ``b*``'s, ``K = L - 1 - b*``, at least 1 (``b* = L - 1``: the
    last block is best, and a run trains at least one block). K never reaches L: the embeddings are not
    probed.
    """
    v = np.asarray(values, dtype=np.float64)
    first = int(np.argmax(v >= v.max() - tolerance))
    return first, max(1, len(v) - 1 - first)
