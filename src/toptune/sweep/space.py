"""The search space of ``sweep.space``: dotted parameter → ``{low, high, log}`` or ``{choices: [...]}``
(checked when the parameters are parsed: :meth:`toptune.config.SweepConfig.__post_init__`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from toptune.config import GROUPS, RunConfig, parse_group


def suggest(trial, space: dict[str, dict]) -> dict[str, Any]:
    """One trial's values: Optuna's ``suggest_categorical`` for choices, ``suggest_int`` when both bounds
    are integers, else ``suggest_float`` (``log`` on a log scale)."""
    out: dict[str, Any] = {}
    for name, spec in space.items():
        if "choices" in spec:
            out[name] = trial.suggest_categorical(name, list(spec["choices"]))
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int):
            out[name] = trial.suggest_int(name, spec["low"], spec["high"], log=bool(spec.get("log", False)))
        else:
            out[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
    return out


def apply(cfg: RunConfig, values: dict[str, Any]) -> RunConfig:
    """``cfg`` with ``values`` (dotted names) set, every group checked again as parsing checks it."""
    groups: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        group, key = name.split(".", 1)
        groups.setdefault(group, {})[key] = value
    changed: dict[str, Any] = {
        g: parse_group(GROUPS[g], {**dataclasses.asdict(getattr(cfg, g)), **over}, g) for g, over in groups.items()
    }
    return dataclasses.replace(cfg, **changed)


def deepest_block(space: dict[str, dict], cfg: RunConfig, num_blocks: int) -> int:
    """The first trainable block of the deepest ``model.trainable_layers`` the space can draw (its fixed value
    when the space leaves it alone): where the one prefix cache of the sweep stores its states."""
    spec = space.get("model.trainable_layers")
    if spec is None:
        candidates = [cfg.model.trainable_layers]
    elif "choices" in spec:
        candidates = list(spec["choices"])
    else:
        candidates = [int(spec["high"])]
    return min(min(dataclasses.replace(cfg.model, trainable_layers=k).trainable_blocks(num_blocks)) for k in candidates)
