"""From Kedro's parameter dicts to typed configs, once: :func:`parse_params` (every group) and
:func:`parse_group` (one), the only places parameters are parsed.

pydantic validates (:mod:`toptune.config.groups`); what it finds wrong becomes one line naming the parameter,
in the words docs/reference/errors.md shows::

    unknown parameter group 'trainig' (did you mean 'training'?); known groups: data, export, …
    unknown parameter training.epoch (did you mean training.epochs?); known: batch_size, …
    training.lr='abc' must be a number, not a string
    training.lr=0.0 must be > 0
    data.val_fraction=0.6 must be in (0, 0.5)
    data.bad_rows='skip' must be 'drop' or 'error'
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import annotated_types
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from toptune.config.groups import GROUPS, RunConfig
from toptune.errors import ConfigError

T = TypeVar("T")

UNKNOWN_KEY = ("unexpected_keyword_argument", "extra_forbidden")
RANGE = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")
BOUNDS = {
    annotated_types.Gt: ("gt", "(", "> "),
    annotated_types.Ge: ("ge", "[", ">= "),
    annotated_types.Lt: ("lt", ")", "< "),
    annotated_types.Le: ("le", "]", "<= "),
}
"""Bound class → (its attribute, its bracket in an interval, its comparison)."""


def parse_params(params: Mapping[str, Any] | None) -> RunConfig:
    """Kedro's whole parameter dict (``catalog.load("parameters")``) as a :class:`RunConfig`: a group
    absent from it gets its defaults; the first unknown group, key or bad value fails in one line."""
    groups: dict[str, Any] = {}
    params = params or {}
    for name in sorted(params, key=str):
        if name not in GROUPS:
            close = difflib.get_close_matches(str(name), list(GROUPS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown parameter group '{name}'{hint}; known groups: {', '.join(sorted(GROUPS))}")
        groups[name] = parse_group(GROUPS[name], params[name], name)
    try:
        return RunConfig(**groups)
    except ValidationError as e:  # a check across groups (RunConfig.__post_init__), already one line
        error = e.errors()[0].get("ctx", {}).get("error")
        raise error if isinstance(error, ConfigError) else e from None


def parse_group(cls: type[T], values: Any, group: str) -> T:
    """One group's dict (``params:training``) as its dataclass ``cls``; None = every default."""
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError(f"parameter group '{group}' must be a mapping of keys, not {values!r}")
    values = {str(k): v for k, v in (values or {}).items()}
    try:
        return cls(**values)
    except ValidationError as e:
        raise config_error(e, cls, values, group) from None


def config_error(e: ValidationError, cls: type, values: dict[str, Any], group: str) -> ConfigError:
    """pydantic's first complaint about ``values`` (for group ``cls``) as one line naming the parameter."""
    errors = e.errors()
    unknown = sorted(str(x["loc"][0]) for x in errors if x["type"] in UNKNOWN_KEY)
    if unknown:
        known = sorted(f.name for f in dataclasses.fields(cls) if f.init)
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {group}.{close[0]}?)" if close else ""
        return ConfigError(f"unknown parameter {group}.{unknown[0]}{hint}; known: {', '.join(known)}")
    first = errors[0]
    if first["type"] == "value_error" and isinstance(first.get("ctx", {}).get("error"), ConfigError):
        return first["ctx"]["error"]  # the group's own __post_init__ check, already one line
    name = str(first["loc"][0])
    hint, value, key = typing.get_type_hints(cls, include_extras=True)[name], values.get(name), f"{group}.{name}"
    if first["type"] in RANGE:
        return ConfigError(f"{key}={as_validated(value, hint)!r} must be {range_text(hint)}")
    if first["type"] == "literal_error":
        return ConfigError(f"{key}={value!r} must be {choices_text(hint)}")
    if first["type"] == "string_pattern_mismatch":
        return ConfigError(f"{key}={value!r} must not be empty")
    return ConfigError(f"{key}={value!r} must be {describe_type(hint)}, not {describe_value(value)}")


def _parts(hint: Any) -> tuple[Any, list[Any]]:
    """``(type, metadata)`` of ``Annotated[type, metadata…]`` (pydantic's ``Field`` unpacked), else ``(hint, [])``."""
    if typing.get_origin(hint) is not typing.Annotated:
        return hint, []
    base, *meta = typing.get_args(hint)
    return base, [m for item in meta for m in (item.metadata if isinstance(item, FieldInfo) else [item])]


def _members(hint: Any) -> list[Any]:
    """The types a value of ``hint`` may have (``X | None`` → ``[X, None]``), ``Annotated`` left on each."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return list(typing.get_args(hint))
    return [hint]


def range_text(hint: Any) -> str:
    """``> 0``, ``>= 1``, ``in (0, 0.5)``, ``in [0, 1)``, with `` or null`` when None is allowed."""
    bounds = [m for member in _members(hint) for m in _parts(member)[1] if type(m) in BOUNDS]
    lower = [b for b in bounds if isinstance(b, (annotated_types.Gt, annotated_types.Ge))]
    upper = [b for b in bounds if b not in lower]
    if lower and upper:
        (lo, lo_bracket, _), (hi, hi_bracket, _) = BOUNDS[type(lower[0])], BOUNDS[type(upper[0])]
        text = f"in {lo_bracket}{getattr(lower[0], lo)}, {getattr(upper[0], hi)}{hi_bracket}"
    else:
        text = " and ".join(BOUNDS[type(b)][2] + str(getattr(b, BOUNDS[type(b)][0])) for b in bounds)
    return text + (" or null" if type(None) in _members(hint) else "")


def choices_text(hint: Any) -> str:
    """``'drop' or 'error'``; ``one of 'auto', 'cpu', 'cuda'`` for more than two."""
    literals = [m for m in _members(hint) if typing.get_origin(m) is typing.Literal]
    choices = [c for literal in literals for c in typing.get_args(literal)]
    if len(choices) == 2:
        return f"{choices[0]!r} or {choices[1]!r}"
    return "one of " + ", ".join(repr(c) for c in choices)


def as_validated(value: Any, hint: Any) -> Any:
    """``value`` as the field holds it: an integer given for a number is a float (``training.lr=0.0``)."""
    numbers = {_parts(member)[0] for member in _members(hint)}
    return float(value) if float in numbers and isinstance(value, int) and not isinstance(value, bool) else value


def describe_type(hint: Any) -> str:
    """``an integer or null``, ``a list of strings``, ``one of 'auto', 'cpu', 'cuda'``, …"""
    members = _members(hint)
    if len(members) > 1:
        return " or ".join(describe_type(m) for m in members)
    base = _parts(hint)[0]
    if typing.get_origin(base) is typing.Literal:
        return choices_text(base)
    if typing.get_origin(base) is list or base is list:
        plural = {int: "integers", float: "numbers", str: "strings", bool: "bools"}
        args = typing.get_args(base)
        return f"a list of {plural.get(_parts(args[0])[0], describe_type(args[0]))}" if args else "a list"
    if typing.get_origin(base) is dict or base is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}.get(
        base, getattr(base, "__name__", str(base))
    )


def describe_value(value: Any) -> str:
    """``a string``, ``a bool``, …"""
    return {
        bool: "a bool",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "null",
        list: "a list",
        tuple: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)
