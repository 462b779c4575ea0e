"""``docs/reference/parameters.md``, written from the dataclasses of :mod:`toptune.config.groups` (their
field docstrings, types, ranges and defaults): ``python -m toptune.config --reference``. A test fails when
the page differs from what this writes, or ``conf/base/parameters*.yml`` from the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from typing import Any

from toptune.config.groups import GROUPS
from toptune.config.parse import _members, _parts, describe_type, range_text

HEADER = """# Parameters

<!-- Written by `python -m toptune.config --reference` from src/toptune/config/groups.py: edit the field
docstrings there, then rewrite this page (a test fails while the two differ). -->

Every parameter of `conf/base/parameters*.yml`, one table per group: its type and allowed values, its
default (`parameters.yml` holds the same values; a test keeps them equal) and what it does. Override a
parameter in `conf/local/parameters.yml` (only the keys you name change) or on the command line:
`kedro run --params training.lr=0.001,model.trainable_layers=4`. A bad value, an unknown key or group
fails before any node runs, in one line naming the parameter."""


def reference() -> str:
    """The whole page."""
    parts = [HEADER]
    for group, cls in GROUPS.items():
        hints = typing.get_type_hints(cls, include_extras=True)
        descriptions = cls.__pydantic_fields__  # type: ignore[attr-defined]  # the field docstrings (STRICT)
        rows = [
            f"| `{group}.{f.name}` | {cell(type_text(hints[f.name]))} | `{default_text(default_of(f))}` | "
            f"{cell(descriptions[f.name].description or '')} |"
            for f in dataclasses.fields(cls)
        ]
        parts += [
            f"## `{group}`\n\n{cell(cls.__doc__ or '')}\n\n| parameter | type | default | what it does |\n"
            "|---|---|---|---|\n" + "\n".join(rows)
        ]
    return "\n\n".join(parts) + "\n"


def type_text(hint: Any) -> str:
    """``an integer >= 1``, ``a number in (0, 0.5)``, ``an integer >= 0 or null``, ``'drop' or 'error'``."""
    texts = []
    for member in _members(hint):
        bounds = range_text(member) if _parts(member)[1] else ""
        texts.append(describe_type(member) + (f" {bounds}" if bounds else ""))
    return " or ".join(texts)


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def default_text(value: Any) -> str:
    """As in ``parameters.yml``: a plain string bare, anything else (a template with newlines) as JSON."""
    return value if isinstance(value, str) and value and value.isprintable() else json.dumps(value)


def cell(text: str) -> str:
    """A docstring as one Markdown table cell: one line, single backticks, ``|`` escaped."""
    return re.sub(r"\s+", " ", text).strip().replace("``", "`").replace("|", "\\|")
