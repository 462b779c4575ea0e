"""The training recipe, top to bottom: device → optimiser → scheduler → epochs of steps → validation.

The loop is written over two small abstractions so that every prefix mode shares it: a split's
:class:`Batches` (each epoch's global batches as example indices, and a loader that turns indices
into tensors) and ``logits_fn(batch)`` that turns a batch into logits (B, C). Live modes feed token
batches through :func:`toptune.prefix.forward.forward_logits`; the cache feeds stored prefix outputs through
:func:`toptune.prefix.forward.run_top`.

Under ``torchrun`` every process walks the same global batches and takes its share of each
(:func:`toptune.train.distributed.share`, on the indices: before any collate or cache gather). Its loss is
the sum over its share divided by the global batch's size, so the all-reduced (summed) gradients of
the trainable parameters are the one-process mean over the global batch; nothing else is reduced.
Validation splits whole batches round robin and gathers the logits, so every process sees the
one-process metrics and takes the same decisions (best epoch, early stop).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from toptune.config import TrainingConfig
from toptune.data.batches import batch_indices, collate
from toptune.data.tokens import Encoded
from toptune.prefix.forward import forward_logits
from toptune.train import distributed
from toptune.train.checkpoint.resume import CheckpointError, Checkpoints
from toptune.train.history import EvalResult, LoopState, better, order_digest

Batch = dict[str, Tensor]
LogitsFn = Callable[[Batch], Tensor]

__all__ = ["Batch", "Batches", "EvalResult", "LogitsFn", "TrainResult", "autocast", "eval_split", "fused_adamw_ok",
           "live_batches", "live_logits", "resolve_device", "run_eval", "seed_everything", "train", "trainable_parameters"]


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; under ``torchrun`` CUDA is ``cuda:LOCAL_RANK``."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device=cuda but no CUDA device is available")
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", distributed.local_rank()) if distributed.world() > 1 else torch.device("cuda")
    return torch.device("cpu" if name == "auto" else name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (weights stay fp32); nothing on CPU (fp32 throughout)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def live_logits(model: nn.Module, first: int, mode: str) -> LogitsFn:
    """Logits of token batches, with the prefix run per ``mode`` (``no_grad`` / ``autograd``)."""
    return lambda b: forward_logits(model, b["input_ids"], b["attention_mask"], first, mode)


@dataclass
class Batches:
    """One split's batches: indices first, tensors on demand (so processes shard the indices)."""

    n: int
    """Examples in the split."""
    order: Callable[[int], list[np.ndarray]]
    """``epoch ->`` the global batches' example indices, in order (reshuffled per epoch when training)."""
    load: Callable[[Iterable[np.ndarray]], Iterator[Batch]]
    """Index arrays → batches of tensors on the device, one per array, in order (may read ahead)."""


def live_batches(enc: Encoded, batch_size: int, pad_token_id: int, shuffle: bool, seed: int,
                 device: torch.device) -> Batches:
    """Token batches of ``enc``, reshuffled per epoch with seed ``seed + epoch`` when ``shuffle``."""

    def load(indices: Iterable[np.ndarray]) -> Iterator[Batch]:
        for idx in indices:
            b = collate([enc.input_ids[i] for i in idx], [enc.labels[i] for i in idx], pad_token_id)
            yield {k: v.to(device) for k, v in b.items()}

    return Batches(len(enc), lambda epoch: batch_indices(len(enc), batch_size, shuffle, seed + epoch), load)


@torch.no_grad()
def run_eval(model: nn.Module, data: Iterable[Batch], logits_fn: LogitsFn, device: torch.device) -> EvalResult:
    """Logits of every example of ``data``, in order, with the model in eval mode (this process only)."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    with autocast(device):
        for b in data:
            logits.append(logits_fn(b).float().cpu())
            labels.append(b["labels"].cpu())
    model.train(was_training)
    if not logits:
        return EvalResult(np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
    return EvalResult(torch.cat(logits).numpy(), torch.cat(labels).numpy())


def eval_split(model: nn.Module, data: Batches, logits_fn: LogitsFn, device: torch.device) -> EvalResult:
    """Logits of every example of ``data`` in split order, on every process: each process runs whole
    batches round robin (a batch's logits are then those one process computes) and they gather."""
    order = data.order(0)
    mine = [order[i] for i in range(len(order)) if distributed.owns(i)]
    ev = run_eval(model, data.load(mine), logits_fn, device)
    idx = np.concatenate(mine) if mine else np.zeros(0, np.int64)
    parts = [p for p in distributed.all_gather((idx, ev.logits, ev.labels)) if len(p[0])]
    if not parts:
        return EvalResult(np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
    logits = np.empty((data.n, parts[0][1].shape[1]), np.float32)
    labels = np.empty(data.n, np.int64)
    for i, lg, lb in parts:
        logits[i], labels[i] = lg, lb
    return EvalResult(logits, labels)


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
    return len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)


def _snapshot(named: list[tuple[str, nn.Parameter]]) -> dict[str, Tensor]:
    return {n: p.detach().to("cpu", copy=True) for n, p in named}


def train(model: nn.Module, data: Batches, logits_fn: LogitsFn, cfg: TrainingConfig, device: torch.device,
          val: Batches | None = None, checkpoints: Checkpoints | None = None) -> TrainResult:
    """AdamW over trainable parameters, linear warm-up and decay, clipping, accumulation; validation per
    epoch, the best epoch's weights kept (``training.metric_for_best``), early stopping, checkpoints."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    if not params:
        raise ValueError("the model has no trainable parameters")
    distributed.check_divides(cfg.batch_size)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused_adamw_ok(params))
    steps_per_epoch = math.ceil(math.ceil(data.n / cfg.batch_size) / cfg.grad_accum_steps)
    total = steps_per_epoch * cfg.epochs
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    st, best_weights, resumed_from = LoopState(), None, None
    restored = checkpoints.restore() if checkpoints is not None else None
    if restored is not None:
        meta, state = restored
        with torch.no_grad():
            for n, p in named:
                p.copy_(state["trainable"][n])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        st, best_weights, resumed_from = LoopState.from_meta(meta), state.get("best"), meta.get("path")

    def save() -> None:  # every process calls it (RNG states are gathered); rank 0 writes
        checkpoints.save(st.to_meta(), {"trainable": _snapshot(named), "best": best_weights,
                                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict()})

    show = cfg.progress and distributed.is_main()
    t_start = time.perf_counter()
    model.train()
    for epoch in range(st.epoch, cfg.epochs):
        if st.finished:
            break
        st.epoch, order = epoch, data.order(epoch)
        if st.batch and st.order_sha256 != order_digest(order):
            raise CheckpointError(f"the batch order of epoch {epoch} differs from the checkpoint's: it cannot continue this run")
        t_epoch, start = time.perf_counter(), sum(len(i) for i in order[: st.batch])
        seen = start
        bar = tqdm(total=data.n, initial=seen, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="ex", disable=not show,
                   leave=False, mininterval=1.0)
        opt.zero_grad(set_to_none=True)
        todo = range(st.batch, len(order))
        shares = [distributed.share(order[i]) for i in todo]
        loaded, parts = data.load(s for s in shares if len(s)), []
        for i, s in zip(todo, shares):
            n_batch = len(order[i])
            if len(s):
                b = next(loaded)
                with autocast(device):
                    logits = logits_fn(b)  # (B_share, C)
                # This process's part of the global batch mean, divided so accumulated gradients average over the virtual batch.
                loss = nn.functional.cross_entropy(logits.float(), b["labels"], reduction="sum") / (n_batch * cfg.grad_accum_steps)
                loss.backward()
                parts.append(loss.detach() * cfg.grad_accum_steps)
            else:
                parts.append(torch.zeros((), device=device))
            seen += n_batch
            last_of_epoch = i == len(order) - 1
            if (i + 1) % cfg.grad_accum_steps == 0 or last_of_epoch:
                losses = distributed.reduce_gradients(params, parts)
                parts = []
                if cfg.max_grad_norm > 0:
                    nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                st.step, st.batch = st.step + 1, i + 1
                st.window += losses
                st.epoch_losses += losses
                if st.step % cfg.log_every == 0 or last_of_epoch:
                    st.steps.append({"step": st.step, "epoch": epoch, "loss": float(np.mean(st.window)), "lr": sched.get_last_lr()[0]})
                    st.window = []
                if checkpoints is not None and checkpoints.due(st.step) and not last_of_epoch:
                    st.order_sha256 = order_digest(order)
                    save()
            bar.update(n_batch)
            bar.set_postfix(loss=f"{st.epoch_losses[-1] if st.epoch_losses else float('nan'):.4f}",
                            ex_s=f"{(seen - start) / (time.perf_counter() - t_epoch):.0f}", refresh=False)  # redraw at most once a second
        bar.close()
        train_time = time.perf_counter() - t_epoch
        row = {"epoch": epoch, "train_loss": float(np.mean(st.epoch_losses)), "epoch_seconds": train_time,
               "examples_per_second": (seen - start) / train_time}
        if val is not None and val.n:
            row.update(eval_split(model, val, logits_fn, device).metrics("val_"))
        st.epochs.append(row)
        if st.best is None or better(row, st.best, cfg.metric_for_best):
            st.best = {"epoch": epoch, "metric": cfg.metric_for_best, "value": row.get(f"val_{cfg.metric_for_best}")}
            best_weights = _snapshot(named)
        st.end_epoch(epoch, cfg)
        if checkpoints is not None:
            save()
        if show:
            tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if best_weights is not None:
        with torch.no_grad():
            for n, p in named:
                p.copy_(best_weights[n])
    return TrainResult(st.steps, st.epochs, time.perf_counter() - t_start, st.summary(cfg), resumed_from)
