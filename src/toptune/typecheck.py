"""Values checked against type annotations: what :func:`toptune.config.from_dict` uses to check every
parameter against its dataclass field, so a new field needs no new check code.

Rules: a bool is not an integer (``true`` is not a K); an integer is a number (and becomes a float);
a list or tuple is a list; ``X | None``, ``Literal[...]``, ``list[X]`` and ``dict[K, V]`` are followed;
an annotation this module does not know accepts anything (the dataclass's own checks still run).
"""

from __future__ import annotations

import types
import typing
from typing import Any


def match_type(value: Any, hint: Any) -> tuple[bool, Any]:
    """``(ok, value)``: whether ``value`` fits ``hint``, and the value converted (an int for a float → float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return True, value
    if hint is type(None):
        return value is None, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, converted = match_type(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is typing.Literal:
        return (not isinstance(value, bool) or any(isinstance(a, bool) for a in args)) and value in args, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        item = args[0] if args else Any
        matched = [match_type(v, item) for v in value]
        return all(ok for ok, _ in matched), [v for _, v in matched]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return False, value
        k_hint, v_hint = args or (Any, Any)
        out = {}
        for k, v in value.items():
            (k_ok, k_val), (v_ok, v_val) = match_type(k, k_hint), match_type(v, v_hint)
            if not (k_ok and v_ok):
                return False, value
            out[k_val] = v_val
        return True, out
    return True, value  # a type this checker does not know: left to __post_init__


def describe_type(hint: Any) -> str:
    """``an integer or null``, ``a list of strings``, …"""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple) or hint in (list, tuple):
        plural = {int: "integers", float: "numbers", str: "strings", bool: "bools"}
        return f"a list of {plural.get(args[0], describe_type(args[0]))}" if args else "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))


def describe_value(value: Any) -> str:
    """``a string``, ``a bool``, …"""
    return {bool: "a bool", int: "an integer", float: "a number", str: "a string", type(None): "null",
            list: "a list", tuple: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)
