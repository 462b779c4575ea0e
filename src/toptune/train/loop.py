"""The training loop, top to bottom: setup (optimiser, scheduler) → restore → epochs of loss steps and
optimiser steps → validation → the best epoch kept → checkpoint.

It is written over a split's :class:`~toptune.train.batches.Batches` and a ``logits_fn`` (see
:mod:`toptune.train.batches`), so every prefix mode shares it. :func:`train` reads as the recipe; each
step is a small method of :class:`_Trainer` (torchtune's ``lora_finetune_single_device`` shape).

Under ``torchrun`` every process walks the same global batches and takes its share of each
(:func:`toptune.train.distributed.share`, on the indices: before any padding or cache gather). Its loss is
the sum over its share divided by the global batch's size, so the all-reduced (summed) gradients of
the trainable parameters are the one-process mean over the global batch; nothing else is reduced.
Validation splits whole batches round robin and gathers the logits, so every process sees the
one-process metrics and takes the same decisions (best epoch, early stop).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from toptune.config import TrainingConfig
from toptune.task import default_metric
from toptune.train import distributed
from toptune.train.batches import Batch, Batches, LogitsFn, eval_split
from toptune.train.checkpoint.resume import CheckpointError, Checkpoints
from toptune.train.device import autocast
from toptune.train.history import LoopState, better, order_digest
from toptune.train.objective import Objective

__all__ = ["TrainResult", "fused_adamw_ok", "train", "trainable_parameters"]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@dataclass
class TrainResult:
    """What a run measured: step-wise loss, per-epoch validation, the best epoch and timing."""

    steps: list[dict] = field(default_factory=list)
    """Per logged optimiser step: ``step``, ``epoch``, ``loss`` (mean over the logged window), ``lr``."""
    epochs: list[dict] = field(default_factory=list)
    """Per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``val_accuracy``, ``val_macro_f1``,
    ``epoch_seconds``, ``examples_per_second``."""
    train_seconds: float = 0.0
    """Wall time of the epochs this process ran, validation included (after a resume: since it)."""
    best: dict | None = None
    """The epoch whose weights the model ends with: ``epoch``, ``metric``, ``value``, ``epochs_run``,
    ``stopped_early``, ``reason``."""
    resumed_from: str | None = None
    """The checkpoint this run continued (``None``: it started from scratch)."""


def fused_adamw_ok(params: list[nn.Parameter]) -> bool:
    """Whether torch's fused AdamW kernel takes these parameters (floating point, all on one CPU or CUDA
    device). It does the update in one kernel per dtype instead of ~10 per tensor: on 2 CPU cores and
    43 LoRA tensors, 0.27 ms a step against 1.40 ms for the default."""
    devices = {p.device for p in params}
    return (
        len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    )


def _snapshot(named: list[tuple[str, nn.Parameter]]) -> dict[str, Tensor]:
    return {n: p.detach().to("cpu", copy=True) for n, p in named}


def train(
    model: nn.Module,
    data: Batches,
    logits_fn: LogitsFn,
    cfg: TrainingConfig,
    device: torch.device,
    val: Batches | None = None,
    checkpoints: Checkpoints | None = None,
    objective: Objective | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """AdamW over trainable parameters, linear warm-up and decay, clipping, accumulation; validation per
    epoch, the best epoch's weights kept (``training.metric_for_best``), early stopping, checkpoints.
    ``objective``: the loss and validation metrics (default: single-label cross-entropy); ``on_epoch``:
    called with each epoch's number and row (``train_loss``, ``val_<metric>``…) once it is validated (a
    sweep reports it to its pruner, and may stop the run by raising)."""
    run = _setup(model, data.n, logits_fn, cfg, device, checkpoints)
    run.objective = objective or Objective()
    run._restore()
    show = cfg.progress and distributed.is_main()
    t_start = time.perf_counter()
    model.train()
    for epoch in range(run.st.epoch, cfg.epochs):
        if run.st.finished:
            break
        row = run._train_epoch(data, epoch, show)
        run._validate(val, row)
        run.st.epochs.append(row)
        run._keep_best(row)
        run.st.end_epoch(epoch, cfg)
        run._save_checkpoint()
        if show:
            tqdm.write(_row_text(row))
        if on_epoch is not None:
            on_epoch(epoch, row)
    if run.best_weights is not None:
        run._load_weights(run.best_weights)
    return TrainResult(
        run.st.steps, run.st.epochs, time.perf_counter() - t_start, run.st.summary(cfg), run.resumed_from
    )


def _setup(
    model: nn.Module,
    n: int,
    logits_fn: LogitsFn,
    cfg: TrainingConfig,
    device: torch.device,
    checkpoints: Checkpoints | None,
) -> _Trainer:
    """AdamW over the trainable parameters and a linear warm-up and decay over every epoch's steps."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    if not params:
        raise ValueError("the model has no trainable parameters")
    distributed.check_divides(cfg.batch_size)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused_adamw_ok(params))
    total = math.ceil(math.ceil(n / cfg.batch_size) / cfg.grad_accum_steps) * cfg.epochs
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    return _Trainer(model, logits_fn, cfg, device, checkpoints, named, opt, sched)


@dataclass
class _Trainer:
    """One run's pieces (:func:`_setup`) and where it is (``st``), with the steps :func:`train` takes:
    torchtune's recipe shape (``_loss_step``, the optimiser step, validation, checkpointing apart)."""

    model: nn.Module
    logits_fn: LogitsFn
    cfg: TrainingConfig
    device: torch.device
    checkpoints: Checkpoints | None
    named: list[tuple[str, nn.Parameter]]
    """The trainable parameters (adapter + head), by name: what a checkpoint and the best epoch keep."""
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    st: LoopState = field(default_factory=LoopState)
    best_weights: dict[str, Tensor] | None = None
    resumed_from: str | None = None
    objective: Objective = field(default_factory=Objective)
    unread: list[Tensor] = field(default_factory=list)
    """The global batches' losses of the steps since the last log, on the device, not yet read."""

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for _, p in self.named]

    def _restore(self) -> None:
        """Continue the checkpoint ``training.resume`` chooses (weights, optimiser, scheduler, history, RNG)."""
        restored = self.checkpoints.restore() if self.checkpoints is not None else None
        if restored is None:
            return
        meta, state = restored
        self._load_weights(state["trainable"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.st, self.best_weights, self.resumed_from = LoopState.from_meta(meta), state.get("best"), meta.get("path")

    def _load_weights(self, weights: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.named:
                p.copy_(weights[n])

    def _loss_step(self, b: Batch, n_batch: int) -> Tensor:
        """Forward and backward of this process's share ``b`` of a global batch of ``n_batch`` examples;
        returns its loss (detached) as a part of the global batch's mean."""
        with autocast(self.device):
            logits = self.logits_fn(b)  # (B_share, C)
        # This process's part of the global batch mean, divided so accumulated gradients average over the virtual batch.
        loss = self.objective.loss_sum(logits, b["labels"]) / (n_batch * self.cfg.grad_accum_steps)
        loss.backward()
        return loss.detach() * self.cfg.grad_accum_steps

    def _optimizer_step(self, parts: list[Tensor]) -> Tensor:
        """All-reduce the gradients, clip, step optimiser and scheduler; the global batches' losses
        (micro-batches,), on the device, unread."""
        losses = distributed.reduce_gradients(self.params, parts)
        if self.cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return losses

    def _log(self, epoch: int, losses: Tensor, batch: int, last_of_epoch: bool) -> None:
        """Count the optimiser step that ended at global batch ``batch``; log the loss window every
        ``training.log_every`` steps and at the epoch's end. The losses stay on the device until then:
        reading a loss waits for the device to finish the step, so it is done once per log interval
        (one ``tolist`` of the window), not once per step."""
        st = self.st
        st.step, st.batch = st.step + 1, batch
        self.unread.append(losses)
        if st.step % self.cfg.log_every == 0 or last_of_epoch:
            self._read_losses()
            st.steps.append(
                {"step": st.step, "epoch": epoch, "loss": float(np.mean(st.window)), "lr": self.sched.get_last_lr()[0]}
            )
            st.window = []

    def _read_losses(self) -> None:
        """Move the unread losses (device tensors) into the window and the epoch's list, as floats."""
        if self.unread:
            values = torch.cat(self.unread).tolist()
            self.st.window += values
            self.st.epoch_losses += values
            self.unread = []

    def _train_epoch(self, data: Batches, epoch: int, show: bool) -> dict:
        """The rest of epoch ``epoch`` (all of it, or from a checkpoint's batch); its row of metrics."""
        st, cfg = self.st, self.cfg
        st.epoch, order = epoch, data.order(epoch)
        if st.batch and st.order_sha256 != order_digest(order):
            raise CheckpointError(
                f"the batch order of epoch {epoch} differs from the checkpoint's: it cannot continue this run"
            )
        t_epoch, start = time.perf_counter(), sum(len(i) for i in order[: st.batch])
        seen = start
        bar = tqdm(
            total=data.n,
            initial=seen,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="ex",
            disable=not show,
            leave=False,
            mininterval=1.0,
        )
        self.opt.zero_grad(set_to_none=True)
        todo = range(st.batch, len(order))
        shares = [distributed.share(order[i]) for i in todo]
        loaded, parts = data.load(s for s in shares if len(s)), []
        for i, s in zip(todo, shares, strict=True):
            n_batch = len(order[i])
            parts.append(self._loss_step(next(loaded), n_batch) if len(s) else torch.zeros((), device=self.device))
            seen += n_batch
            last_of_epoch = i == len(order) - 1
            if (i + 1) % cfg.grad_accum_steps == 0 or last_of_epoch:
                self._log(epoch, self._optimizer_step(parts), i + 1, last_of_epoch)
                parts = []
                if self.checkpoints is not None and self.checkpoints.due(st.step) and not last_of_epoch:
                    st.order_sha256 = order_digest(order)
                    self._save_checkpoint()
            bar.update(n_batch)
            bar.set_postfix(
                loss=f"{st.epoch_losses[-1] if st.epoch_losses else float('nan'):.4f}",
                ex_s=f"{(seen - start) / (time.perf_counter() - t_epoch):.0f}",
                refresh=False,
            )  # redraw at most once a second
        bar.close()
        seconds = time.perf_counter() - t_epoch
        return {
            "epoch": epoch,
            "train_loss": float(np.mean(st.epoch_losses)),
            "epoch_seconds": seconds,
            "examples_per_second": (seen - start) / seconds,
        }

    def _validate(self, val: Batches | None, row: dict) -> None:
        """Add the validation split's ``val_*`` metrics to the epoch's ``row``."""
        if val is not None and val.n:
            row.update(eval_split(self.model, val, self.logits_fn, self.device).metrics("val_", self.objective))

    def _keep_best(self, row: dict) -> None:
        """Keep the epoch's weights when it beats the best so far on ``training.metric_for_best``."""
        metric = self.cfg.metric_for_best or default_metric(self.objective.task.problem_type)
        if self.st.best is None or better(row, self.st.best, metric):
            self.st.best = {"epoch": row["epoch"], "metric": metric, "value": row.get(f"val_{metric}")}
            self.best_weights = _snapshot(self.named)

    def _save_checkpoint(self) -> None:
        """Every process calls it (RNG states are gathered); rank 0 writes."""
        if self.checkpoints is not None:
            self._read_losses()  # the window a checkpoint stores is plain floats
            self.checkpoints.save(
                self.st.to_meta(),
                {
                    "trainable": _snapshot(self.named),
                    "best": self.best_weights,
                    "optimizer": self.opt.state_dict(),
                    "scheduler": self.sched.state_dict(),
                },
            )


def _row_text(row: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
