"""What training minimises and what validation reports, per problem type (:class:`toptune.task.Task`).

=============  ====================================================  =====================================
kind           loss per row (the loop sums and divides by the batch)  validation metrics per epoch
=============  ====================================================  =====================================
single-label   cross-entropy (class weights: ``weight``)             loss, accuracy, macro_f1
multi-label    BCE with logits, mean over classes (``pos_weight``)    loss, micro/macro_f1, subset_accuracy,
                                                                     hamming_loss (thresholds 0.5)
regression     ½·squared error or Huber (δ 1), standardised target   loss, rmse, mae, r2, spearman, pearson
=============  ====================================================  =====================================

The validation loss is the training loss's mean over the split, so the two read on one scale.

The regression loss is *half* the squared error (``mse``): its gradient per row is the error in target
standard deviations, the scale cross-entropy's gradient has and ``training.max_grad_norm: 1`` is set for, and
the same as Huber's below δ. The full squared error doubles every gradient against that clip: on the
acceptance table (seed 42, 4 epochs) it reached validation spearman 0.28 (0.67 unclipped), half of it
0.74 (bench/RESULTS.md, "Regression loss scale").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from toptune.config import DataConfig, TrainingConfig
from toptune.data.tokens import Encoded
from toptune.errors import DataValidationError
from toptune.evaluate.calibration import expected_calibration_error, fit_temperature, nll, tune_thresholds
from toptune.evaluate.metrics import multilabel_metrics, regression_metrics
from toptune.task import MULTI, REGRESSION, SINGLE, Task, class_weights

if TYPE_CHECKING:  # history imports this module
    from toptune.train.history import EvalResult


@dataclass
class Objective:
    """A task's loss and validation metrics."""

    task: Task = field(default_factory=lambda: Task(SINGLE))
    regression_loss: str = "mse"
    """``training.regression_loss``: ``mse`` (half the squared error) or ``huber`` (delta 1)."""
    _weights: dict[torch.device, Tensor] = field(default_factory=dict, repr=False)

    def weights(self, device: torch.device) -> Tensor | None:
        """(C,) float32 class weights on ``device`` (made once per device), or None."""
        if self.task.class_weights is None:
            return None
        if device not in self._weights:
            self._weights[device] = torch.tensor(self.task.class_weights, dtype=torch.float32, device=device)
        return self._weights[device]

    def loss_sum(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Sum over the rows of each row's loss: ``logits`` (B, C), ``labels`` (B,) int64 classes, (B, C)
        float multi-hot or (B,) float values on the target's own scale."""
        logits = logits.float()
        kind = self.task.problem_type
        if kind == MULTI:
            per_row = F.binary_cross_entropy_with_logits(
                logits, labels.float(), pos_weight=self.weights(logits.device), reduction="none"
            ).mean(-1)  # (B,)
            return per_row.sum()
        if kind == REGRESSION:
            target = (labels.float() - self.task.target_mean) / self.task.target_std  # (B,) standardised
            if self.regression_loss == "huber":
                return F.huber_loss(logits[:, 0], target, reduction="sum", delta=1.0)
            return 0.5 * F.mse_loss(logits[:, 0], target, reduction="sum")  # gradient = error (module doc)
        return F.cross_entropy(logits, labels, weight=self.weights(logits.device), reduction="sum")

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Validation metrics of one split's ``logits`` (N, C) and stored ``labels`` (loss: the mean row loss)."""
        if not len(labels):
            return {}
        with torch.no_grad():
            loss = float(self.loss_sum(torch.from_numpy(logits), torch.from_numpy(labels))) / len(labels)
        kind = self.task.problem_type
        if kind == MULTI:
            m = multilabel_metrics(
                self.task.probabilities(logits), labels, [0.5] * self.task.num_labels, self.task.id2label
            )
            keep: tuple[str, ...] = ("micro_f1", "macro_f1", "subset_accuracy", "hamming_loss")
        elif kind == REGRESSION:
            m = regression_metrics(self.task.values(logits), labels)
            keep = ("rmse", "mae", "r2", "spearman", "pearson")
        else:
            return {"loss": loss, **single_metrics(logits, labels)}
        return {"loss": loss, **{k: float(m[k]) for k in keep}}


def single_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 over every class of the head (a class never predicted nor present counts 0)."""
    from sklearn.metrics import f1_score  # sklearn's import is heavy; validation needs it once per epoch

    pred = logits.argmax(-1)
    f1 = f1_score(labels, pred, labels=list(range(logits.shape[1])), average="macro", zero_division=0)
    return {"accuracy": float((pred == labels).mean()), "macro_f1": float(f1)}


def make_task(data: DataConfig, training: TrainingConfig, id2label: dict[int, str], train_labels: np.ndarray) -> Task:
    """The task a run trains, from the training split's stored labels: the class weights
    ``training.class_weights`` asks for, or (regression) the target's mean and standard deviation."""
    task = Task(data.problem_type, dict(id2label), data.label_separator)
    labels = np.asarray(train_labels)
    if task.problem_type == REGRESSION:
        task.target_mean, task.target_std = float(labels.mean()), float(labels.std())
        if not task.target_std > 0:
            raise DataValidationError(
                f"data.label_column='{data.label_column}' is constant in the training split: a regression needs "
                "targets that vary"
            )
        return task
    if task.problem_type == MULTI:
        counts = labels.sum(0, dtype=np.int64)  # (C,) positives per class
    else:
        counts = np.bincount(labels, minlength=task.num_labels)
    task.class_weights = class_weights(training.class_weights, task, counts, len(labels))
    return task


def calibrate(task: Task, val: EvalResult, training: TrainingConfig) -> tuple[Task, dict[str, float]]:
    """The task with a temperature fitted on the validation split's logits (``training.calibrate``) and, for
    multi-label, thresholds tuned on its calibrated probabilities (``training.thresholds``); and what was
    measured: validation NLL and ECE before (``*_uncalibrated``) and after."""
    if not task.classifies or not len(val.labels):
        return task, {}
    kind, out = task.problem_type, dataclasses.replace(task)
    before = out.probabilities(val.logits)
    report = {
        "nll_uncalibrated": nll(val.logits, val.labels, kind),
        "ece_uncalibrated": expected_calibration_error(before, val.labels, kind),
    }
    if training.calibrate:
        out.temperature = fit_temperature(val.logits, val.labels, kind)
    probs = out.probabilities(val.logits)
    report.update(
        temperature=out.temperature,
        nll=nll(val.logits, val.labels, kind, out.temperature),
        ece=expected_calibration_error(probs, val.labels, kind),
    )
    if kind == MULTI:
        fixed = training.thresholds
        out.thresholds = [float(fixed)] * task.num_labels if fixed != "tune" else tune_thresholds(probs, val.labels)
    return out, report


def stored_labels(enc: Encoded, problem_type: str) -> np.ndarray:
    """A split's stored labels, checked to be ``problem_type``'s (a token store made for another kind
    fails naming the fix)."""
    labels = np.asarray(enc.labels)
    found = labels_kind(labels)
    if found != problem_type:
        raise DataValidationError(
            f"the token store holds {found} labels but data.problem_type is {problem_type}: run the data "
            "pipeline again (kedro run, or kedro run --pipeline data)"
        )
    return labels


def labels_kind(labels: np.ndarray) -> str:
    """The problem type stored labels are laid out for: (N, C) multi-hot, (N,) floats or (N,) class indices."""
    if labels.ndim == 2:
        return MULTI
    return REGRESSION if np.issubdtype(labels.dtype, np.floating) else SINGLE
