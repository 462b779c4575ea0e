"""What a checkpoint is valid for: everything that changes the training trajectory.

A checkpoint continues a run only when the run would have taken the very same steps: same
parameters (those that change what is computed), same model, same tokenised data, same number of
processes, same device type. Fields::

    params  the parameters that matter, flattened (``training.lr`` …), compared one by one
    model   the checkpoint: hub id, or for a local directory its config, tokenizer files and the
            names, sizes and modification times of its weight files (not their bytes: a 27B model
            would take minutes to hash)
    data    sha256 of every split's token ids and labels (``None`` until the data is known)
    world   processes in the job (each keeps its own RNG state in the checkpoint)
    device  ``cpu`` / ``cuda`` (the same steps give other bits on another device)

Left out of ``params`` because they do not change the steps taken: where the cache lives, how
often checkpoints are written, whether to resume, progress bars, the evaluation batch size, and
``training.early_stopping_patience`` (when to stop, decided again from the stored validation
history). ``training.epochs`` is in: the linear learning-rate decay spans every epoch's steps, so
another epoch count changes the learning rate of every step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from toptune.config import DEFAULT_MODEL_PATH, RunConfig
from toptune.data.tokens import Encoded, token_digest

FORMAT = 1
"""Version of the checkpoint layout; a checkpoint of another version is not used."""

IGNORED_PARAMS = frozenset(
    {
        "training.cache_dir",
        "training.cache_max_bytes",
        "training.cache_verify",
        "training.checkpoint_every",
        "training.resume",
        "training.progress",
        "training.eval_batch_size",
        "training.early_stopping_patience",
        "training.device",
    }
)
"""Parameters that do not change the steps taken (``training.device`` is replaced by ``device``,
the resolved device type)."""

DECIDED_AT_RUN = {"training.prefix_mode": "auto"}
"""Parameters whose configured value is decided when the run starts (``auto`` → ``cache`` or ``no_grad``,
by measurement). A checkpoint records the decided value; a fingerprint that still holds the undecided
one matches either (the run then continues in the checkpoint's mode)."""

_SMALL_MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def relevant_params(cfg: RunConfig) -> dict[str, object]:
    """``{"training.lr": 0.003, …}``: every parameter of ``cfg`` that changes the steps taken."""
    out = {}
    for group in ("data", "model", "lora", "training"):
        for key, value in dataclasses.asdict(getattr(cfg, group)).items():
            name = f"{group}.{key}"
            if name not in IGNORED_PARAMS:
                out[name] = value
    return out


def model_identity(name_or_path: str) -> str:
    """A short description that changes when the checkpoint does (see the module docstring). The
    embedded default is named by its spec: it is written from it, identically, on first use."""
    if Path(name_or_path) == Path(DEFAULT_MODEL_PATH):
        from toptune.model.tiny import TinyQwenSpec  # heavy: torch + transformers, which this module never needs

        return "embedded " + json.dumps(dataclasses.asdict(TinyQwenSpec()), sort_keys=True)
    path = Path(name_or_path)
    if not path.is_dir():
        return f"hub {name_or_path}"
    h = hashlib.sha256()
    for name in _SMALL_MODEL_FILES:
        if (path / name).is_file():
            h.update(name.encode() + (path / name).read_bytes())
    for f in sorted(path.iterdir()):
        if f.suffix in _WEIGHT_SUFFIXES:
            st = f.stat()
            h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return f"dir {path.resolve()} {h.hexdigest()[:16]}"


def fingerprint(cfg: RunConfig, world: int, device_type: str, data: dict[str, Encoded] | None = None) -> dict:
    """The fingerprint of a run of ``cfg`` on ``world`` processes (``data`` None: not known yet)."""
    return {
        "format": FORMAT,
        "params": relevant_params(cfg),
        "model": model_identity(cfg.model.name_or_path),
        "data": token_digest(data, labels=True) if data is not None else None,
        "world": world,
        "device": device_type,
    }


def _short(v: object) -> object:
    return v[:12] if isinstance(v, str) and len(v) == 64 else v


def fingerprint_diff(old: dict, new: dict, skip: tuple[str, ...] = ()) -> list[str]:
    """One phrase per field that differs (``training.lr changed (0.003 → 0.001)``, parameters one by
    one, hashes shortened); fields in ``skip`` are not compared, nor a parameter ``new`` holds undecided
    (``DECIDED_AT_RUN``)."""
    out = []
    for key in sorted((set(old) | set(new)) - set(skip)):
        a, b = old.get(key), new.get(key)
        if key == "params" and isinstance(a, dict) and isinstance(b, dict):
            out += [
                f"{k} changed ({a.get(k, 'unset')!r} → {b.get(k, 'unset')!r})"
                for k in sorted(set(a) | set(b))
                if a.get(k, "unset") != b.get(k, "unset")
                and not (k in DECIDED_AT_RUN and b.get(k) == DECIDED_AT_RUN[k])
            ]
        elif a != b:
            out.append(f"{key} changed ({_short(a)} → {_short(b)})")
    return out
