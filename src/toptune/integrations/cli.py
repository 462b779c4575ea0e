"""``kedro run`` with one-line errors for expected failures (Kedro layer: the project's CLI hook).

Kedro imports ``<package>.cli`` and lets the commands of its ``cli`` group replace its own. ``run`` here
is Kedro's own command (same options, same session) with one difference. An expected failure prints
one line on the terminal that names the file, column or parameter and the fix, and exits 1. Expected
failures are toptune's own errors (a bad parameter, table, bundle, a busy project) and input files
that cannot be read (wrong encoding, empty, malformed, missing). The full trace of such a failure goes
to the log file ``toptune.log`` at the project root (see ``conf/logging.yml``). Any other error propagates with its
traceback, as in plain Kedro. Without this, the exception would rise out of ``session.run`` through
Kedro's CLI to Python's (rich) traceback printer.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import click
from kedro.framework.cli.project import run as kedro_run
from kedro.framework.cli.utils import CONTEXT_SETTINGS

from toptune.errors import ToptuneError

LOG_FILE = Path("toptune.log")
"""Where the full trace of an expected failure goes (relative to the project root)."""
ERROR_LOGGER = "toptune.errors"
"""Logger of those traces: a file handler only (never the terminal)."""


def _chain(exc: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def load_failure(exc: BaseException) -> str | None:
    """One line for a dataset that could not be read (Kedro's ``DatasetError`` around the cause), naming
    the file and the fix; None for anything else."""
    import pandas as pd  # heavy: ~1 s on every Kedro command otherwise; needed only after a failure

    chain = _chain(exc)
    wrapper = next((e for e in chain if type(e).__name__ == "DatasetError"), None)
    if wrapper is None:
        return None
    m = re.search(r"filepath=(?:\w*Path\()?'?([^',)]+)", str(wrapper))
    where = m.group(1) if m else "an input dataset"
    for e in chain:
        if isinstance(e, UnicodeDecodeError):
            return (
                f"cannot read {where}: it is not {e.encoding} text (byte 0x{e.object[e.start]:02x}); "
                f"name its encoding in the catalog entry: load_args: {{encoding: latin-1}} (or the file's encoding)"
            )
        if isinstance(e, pd.errors.EmptyDataError):
            return f"cannot read {where}: the file is empty ({e}); point the catalog entry at a table with a header row"
        if isinstance(e, pd.errors.ParserError):
            return f"cannot read {where}: not a well-formed table ({str(e).strip().splitlines()[-1]})"
        if isinstance(e, FileNotFoundError):
            return f"cannot read {where}: no such file; fix the catalog entry's filepath"
    return None


def one_line(exc: BaseException) -> str | None:
    """The one-line message of an expected failure, or None for an unexpected one."""
    for e in _chain(exc):
        if isinstance(e, ToptuneError):
            return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return load_failure(exc)


def log_trace(exc: BaseException, message: str) -> Path:
    """Write ``exc``'s full trace to the log file (a file handler is added when the logging config has none)."""
    logger = logging.getLogger(ERROR_LOGGER)
    if not logger.handlers:  # a logging config without conf/logging.yml's file handler
        logger.addHandler(logging.FileHandler(LOG_FILE, encoding="utf-8"))
        logger.propagate = False
    logger.error("%s", message, exc_info=exc)
    files = [Path(h.baseFilename) for h in logger.handlers if isinstance(h, logging.FileHandler)]
    path = files[0] if files else LOG_FILE
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


@click.group(context_settings=CONTEXT_SETTINGS, name=__file__)
def cli() -> None:
    """toptune's project commands."""


@cli.command(
    "run",
    context_settings=kedro_run.context_settings,
    params=kedro_run.params,
    help=kedro_run.help,
    short_help=kedro_run.short_help,
)
def run(**kwargs):
    try:
        return kedro_run.callback(**kwargs)
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is an expected failure
        message = one_line(exc)
        if message is None:
            raise
        try:
            where = f" (full trace: {log_trace(exc, message)})"
        except OSError:
            where = ""
        sys.stdout.flush()  # the log lines before it, so the message is the last line of the output
        click.secho(f"toptune: {message}{where}", fg="red", err=True)
        sys.exit(1)
