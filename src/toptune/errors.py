"""The expected errors: bad input, not bugs. Each message is one line naming the parameter, column, file or
directory and what to do; ``kedro run`` prints that line (exit status 1, the trace only in ``toptune.log``)
for any :class:`ToptuneError`, and keeps the traceback of every other exception (a bug).

Each class also derives from the builtin its callers caught before there was a base class (``ValueError``,
``RuntimeError``), so ``except ValueError`` around a bad parameter still holds.
"""

from __future__ import annotations


class ToptuneError(Exception):
    """An expected error; its message is one line (see the module docstring)."""


class ConfigError(ToptuneError, ValueError):
    """A parameter has a bad value; the message names it (``training.lr='abc' must be a number, not a string``)."""


class CheckpointError(ConfigError):
    """A checkpoint cannot be used; the message says why (a ``ConfigError``: it is ``training.resume``'s
    choice that cannot be honoured)."""


class DataValidationError(ToptuneError, ValueError):
    """The table cannot be used as configured; the message names the column / row / parameter."""


class BundleError(ToptuneError, ValueError):
    """A model directory is not a whole toptune bundle; the message names the directory and the part."""


class ProjectBusyError(ToptuneError, RuntimeError):
    """Another run holds the project; the message names it."""
