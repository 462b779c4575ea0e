"""Checks of a run's model that need nothing loaded: the model's source on disk and
``model.trainable_layers`` against the checkpoint's ``config.json`` (read as JSON, never loaded). The
parameters themselves (groups, keys, types, ranges) are parsed before this, by :func:`toptune.config.parse_params`.

Each failure is a :class:`toptune.errors.ConfigError` whose one-line message names the parameter.
"""

from __future__ import annotations

from pathlib import Path

from toptune.config import DEFAULT_MODEL_PATH, ConfigError, ModelConfig
from toptune.serve.bundle import BundleError, base_checkpoint_dir, read_config, weight_files


def is_local_path(name_or_path: str) -> bool:
    """A local path (existing, absolute, starting ``.`` or ``~``, or of three or more parts) rather than a
    hub id (``name`` or ``org/name``)."""
    return (
        Path(name_or_path).expanduser().exists()
        or name_or_path.startswith(("/", ".", "~"))
        or name_or_path.count("/") >= 2
    )


def base_checkpoint_num_blocks(name_or_path: str) -> int | None:
    """Decoder blocks of the base checkpoint, read from its ``config.json`` (a composite config keeps them in
    ``text_config``); None for a hub id with no local copy (checked when it loads).

    Fails naming ``model.name_or_path`` for a local path that does not exist, has no ``config.json``,
    or has only pickle weights (toptune loads safetensors only).
    """
    if Path(name_or_path) == Path(DEFAULT_MODEL_PATH) and not (Path(name_or_path) / "config.json").is_file():
        from toptune.model.tiny import TinyQwenSpec  # heavy: torch and transformers, for the embedded default only

        return TinyQwenSpec().num_layers  # the embedded default, written on first use
    local = base_checkpoint_dir(name_or_path)
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
    n = base_checkpoint_num_blocks(cfg.name_or_path)
    if n is None:
        return None
    try:
        return cfg.trainable_blocks(n)
    except ConfigError as e:
        raise ConfigError(f"{e} (model.name_or_path={cfg.name_or_path}, config.json num_hidden_layers={n})") from None
