"""Checks of a run's parameters that need no model and no data loaded: groups and keys, types and
ranges (from the dataclasses, :func:`toptune.config.from_dict`), the model's source on disk and
``model.trainable_layers`` against the checkpoint's ``config.json`` (read as JSON, never loaded).

Each failure is a :class:`toptune.config.ConfigError` whose one-line message names the parameter.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from toptune.config import DEFAULT_MODEL_PATH, ConfigError, ModelConfig, from_dict


def check_groups(params: dict[str, Any], groups: dict[str, type]) -> dict[str, Any]:
    """Every parameter group of ``params`` built as its dataclass; an unknown group fails naming it."""
    out = {}
    for name in sorted(params):
        if name not in groups:
            close = difflib.get_close_matches(name, list(groups), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown parameter group '{name}'{hint}; known groups: {', '.join(sorted(groups))}")
        value = params[name]
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"parameter group '{name}' must be a mapping of keys, not {value!r}")
        out[name] = from_dict(groups[name], value, name)
    return out


def is_local_path(name_or_path: str) -> bool:
    """A local path (existing, absolute, starting ``.`` or ``~``, or of three or more parts) rather than a
    hub id (``name`` or ``org/name``)."""
    return (Path(name_or_path).expanduser().exists() or name_or_path.startswith(("/", ".", "~"))
            or name_or_path.count("/") >= 2)


def checkpoint_layers(name_or_path: str) -> int | None:
    """Decoder blocks of the checkpoint, read from its ``config.json`` (a composite config keeps them in
    ``text_config``); None for a hub id with no local copy (checked when it loads).

    Fails naming ``model.name_or_path`` for a local path that does not exist, has no ``config.json``,
    or has only pickle weights (toptune loads safetensors only).
    """
    from toptune.serve.bundle import (
        BundleError,
        checkpoint_dir,
        read_config,
        weight_files,
    )

    if Path(name_or_path) == Path(DEFAULT_MODEL_PATH) and not (Path(name_or_path) / "config.json").is_file():
        from toptune.model.tiny import TinyQwenSpec

        return TinyQwenSpec().num_layers  # the embedded default, written on first use
    local = checkpoint_dir(name_or_path)
    if local is None:
        if is_local_path(name_or_path):
            raise ConfigError(f"model.name_or_path={name_or_path}: no such directory")
        return None
    try:
        weight_files(local)
        n = read_config(local).get("num_hidden_layers")
    except BundleError as e:
        raise ConfigError(f"model.name_or_path={name_or_path}: {e}") from None
    return int(n) if isinstance(n, int) else None


def check_model(cfg: ModelConfig) -> list[int] | None:
    """The trainable block indices, checked against the checkpoint (None when it is not on disk yet)."""
    n = checkpoint_layers(cfg.name_or_path)
    if n is None:
        return None
    try:
        return cfg.trainable_blocks(n)
    except ConfigError as e:
        raise ConfigError(f"{e} (model.name_or_path={cfg.name_or_path}, config.json num_hidden_layers={n})") from None
