"""Checkpoints and resume: which checkpoint a run continues, and the RNG states of every process.

``training.resume``: ``auto`` continues the newest complete checkpoint whose fingerprint matches
(and, when the run is tracked, that was made by the same MLflow run: the tracking layer reopens the
run of the checkpoint it continues); ``never`` starts over; a path continues that checkpoint or
refuses it in one line naming what differs. Under ``auto`` a checkpoint of another configuration is
skipped with one log line saying why. Rank 0 chooses and reads; every process gets its choice.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from toptune.train import distributed
from toptune.train.checkpoint.fingerprint import FORMAT, fingerprint, fingerprint_diff
from toptune.train.checkpoint.store import (
    Checkpoint,
    CheckpointError,
    job_key,
    newest_first,
    prune,
    read,
    write,
)

__all__ = [
    "CHECKPOINT_DIR",
    "KEEP",
    "Checkpoint",
    "CheckpointError",
    "Checkpoints",
    "Selection",
    "fingerprint",
    "fingerprint_diff",
    "newest_first",
    "read",
    "refusal",
    "select",
]

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "data/06_models/checkpoints"
"""Where the training pipeline writes its checkpoints (relative to the project root)."""
KEEP = 3
"""Checkpoints kept per job and run: the newest three (each holds the best epoch's weights too)."""


def refusal(ck: Checkpoint, fp: dict, run_id: str | None = None, skip: tuple[str, ...] = ()) -> list[str]:
    """Why checkpoint ``ck`` cannot continue a run of fingerprint ``fp`` (and MLflow run ``run_id``,
    when given); empty when it can."""
    if ck.meta.get("format") != FORMAT:
        return [f"checkpoint format {ck.meta.get('format')} is not the current {FORMAT}"]
    reasons = fingerprint_diff(ck.meta.get("fingerprint", {}), fp, skip)
    if run_id is not None and ck.meta.get("run_id") != run_id:
        reasons.append(f"made by MLflow run {ck.meta.get('run_id')}, not this run {run_id}")
    return reasons


@dataclass(frozen=True)
class Selection:
    """Which checkpoint a run continues: ``checkpoint``, or None and why (``why``)."""

    checkpoint: Checkpoint | None
    why: Literal["given", "newest_match", "resume_never", "none_match", "refused"]
    """``given``: the path ``training.resume`` names; ``newest_match``: the newest that matches (``auto``);
    ``resume_never``: ``training.resume=never``; ``none_match``: ``auto`` found none; ``refused``: the
    run cannot go on (``message`` says why, in one line)."""
    message: str = ""
    skipped: tuple[tuple[Checkpoint, str], ...] = ()
    """Under ``auto``, the newer checkpoints passed over, each with why."""

    def get(self) -> Checkpoint | None:
        """The checkpoint (None: start over); :class:`CheckpointError` when ``refused``."""
        if self.why == "refused":
            raise CheckpointError(self.message)
        return self.checkpoint


def select(
    directory: str | Path,
    fp: dict,
    resume: str,
    run_id: str | None = None,
    skip: tuple[str, ...] = (),
    also: Callable[[Checkpoint], list[str]] | None = None,
) -> Selection:
    """The checkpoint ``training.resume`` asks for (see the module docstring), compared with fingerprint
    ``fp`` (fields in ``skip`` left out) and, when given, refused for the reasons ``also`` finds (the
    tracking layer's: its MLflow run). The one place that chooses; the training and the tracking layer
    both ask it."""
    if resume == "never":
        return Selection(None, "resume_never")
    if resume != "auto":
        try:
            ck = read(resume)
        except CheckpointError as e:
            return Selection(None, "refused", f"training.resume={resume}: {e}")
        reasons = refusal(ck, fp, skip=skip) + (also(ck) if also else [])
        if reasons:
            return Selection(
                None,
                "refused",
                f"training.resume={resume}: refused, made for another configuration: {'; '.join(reasons)}",
            )
        return Selection(ck, "given")
    skipped: list[tuple[Checkpoint, str]] = []
    for ck in newest_first(directory):
        reasons = refusal(ck, fp, run_id, skip) or (also(ck) if also else [])
        if not reasons:
            return Selection(ck, "newest_match", skipped=tuple(skipped))
        if run_id is not None and ck.meta.get("run_id") == run_id:
            # The tracking layer reopened this checkpoint's run: starting over in it would log every step twice.
            return Selection(
                None,
                "refused",
                f"checkpoint {ck.path} of MLflow run {run_id} cannot continue it: "
                f"{'; '.join(reasons)}; start a new run with training.resume=never",
            )
        skipped.append((ck, "; ".join(reasons)))
    return Selection(None, "none_match", skipped=tuple(skipped))


def rng_state() -> dict:
    """This process's RNG states: Python, NumPy, torch CPU and (when present) its CUDA device."""
    numpy_state = np.random.get_state()
    assert isinstance(numpy_state, tuple)  # legacy=True, the default: (kind, keys, pos, has_gauss, gauss)
    kind, keys, pos, has_gauss, gauss = numpy_state
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` took."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class Checkpoints:
    """How one run checkpoints and resumes (``training.checkpoint_every`` / ``training.resume``)."""

    directory: Path
    """Where checkpoints live (``data/06_models/checkpoints`` in the project)."""
    fingerprint: dict
    """This run's :func:`~toptune.train.checkpoint.fingerprint.fingerprint`, data included."""
    resume: str = "auto"
    """``auto``, ``never`` or a checkpoint directory."""
    every: int | None = None
    """Optimiser steps between checkpoints; None or 0: only at epoch ends."""
    run_id: str | None = None
    """The MLflow run this run logs to (kept beside the checkpoint; rank 0 knows it)."""
    keep: int = KEEP
    _chosen: tuple[dict | None] | None = field(default=None, init=False, repr=False)

    @property
    def job(self) -> str:
        return job_key({k: v for k, v in self.fingerprint.items() if k != "data"})

    def due(self, step: int) -> bool:
        """Whether optimiser step ``step`` ends with a checkpoint (besides the epoch ends)."""
        return self.every is not None and self.every > 0 and step % self.every == 0

    def choose(self) -> dict | None:
        """The metadata (with its ``path``) of the checkpoint this run continues, on every process (rank 0
        chooses, once: later calls return the same); None to start over. With ``training.prefix_mode:
        auto`` in the fingerprint, a checkpoint of either decided mode matches: the caller then trains in
        the checkpoint's mode and sets the fingerprint to it before :meth:`restore`."""
        if self._chosen is None:
            choice, error = None, None
            if distributed.is_main():
                chosen = select(self.directory, self.fingerprint, self.resume, self.run_id)
                for ck, why in chosen.skipped:
                    log.info("checkpoint %s skipped: %s", ck.path, why)
                if chosen.checkpoint is not None:
                    choice = {**chosen.checkpoint.meta, "path": str(chosen.checkpoint.path)}
                error = chosen.message if chosen.why == "refused" else None
            choice, error = distributed.broadcast((choice, error))
            if error:
                raise CheckpointError(error)
            self._chosen = (choice,)
        return self._chosen[0]

    def restore(self) -> tuple[dict, dict] | None:
        """``(meta, state)`` of the checkpoint to continue (:meth:`choose`), on every process (rank 0 reads
        and sends it), with this process's RNG states restored; None to start over."""
        meta = self.choose()
        if meta is None:
            return None
        state, error = None, None
        if distributed.is_main():
            try:
                ck = read(meta["path"])
                reasons = refusal(ck, self.fingerprint)
                if reasons:
                    raise CheckpointError(f"checkpoint {ck.path} cannot continue this run: {'; '.join(reasons)}")
                state = ck.load_state()
                log.info(
                    "resuming from checkpoint %s: epoch %d, step %d (MLflow run %s)",
                    ck.path,
                    meta["epoch"],
                    ck.step,
                    meta.get("run_id"),
                )
            except CheckpointError as e:
                error = str(e)
        state, error = distributed.broadcast((state, error))
        if error:
            raise CheckpointError(error)
        set_rng_state(state["rng"][distributed.rank()])
        return meta, state

    def save(self, meta: dict, state: dict) -> Path | None:
        """Write a checkpoint of ``meta`` (epoch, step, history, …) and ``state`` (tensors), with every
        process's RNG states; every process calls it, rank 0 writes. Returns its path on rank 0."""
        rngs = distributed.all_gather(rng_state())
        if not distributed.is_main():
            return None
        name = f"{self.job}-e{meta['epoch']:03d}-s{meta['step']:07d}"
        meta = {"format": FORMAT, "job": self.job, "fingerprint": self.fingerprint, "run_id": self.run_id, **meta}
        ck = write(Path(self.directory), name, {**state, "rng": rngs}, meta)
        prune(self.directory, self.job, self.run_id, self.keep)
        log.debug("checkpoint %s written", ck.path)
        return ck.path
