"""One run at a time in a project: an exclusive ``flock`` on ``.toptune.lock`` at the project root.

Every run writes to the same data files, so a second run refuses, in one line naming the first, while
the first holds the lock. The kernel drops a ``flock`` when its process dies, so a killed run's lock
is simply taken by the next one. Under ``torchrun`` only the process with ``RANK`` unset or ``0``
takes it: the other ranks of the same job go through.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, no lock
    fcntl = None

LOCK_FILE = ".toptune.lock"


class ProjectBusyError(RuntimeError):
    """Another run holds the project; the message names it."""


def takes_lock(env: dict[str, str] | None = None) -> bool:
    """Whether this process takes the project lock: not a ``torchrun`` rank other than 0."""
    return (env if env is not None else os.environ).get("RANK", "0") in ("", "0")


class ProjectLock:
    """The project's lock; re-entrant within one process (sequential runs in one Python session)."""

    _held: dict[Path, int] = {}  # lock path → open file descriptor holding the flock

    def __init__(self, project_path: str | Path):
        self.path = Path(project_path).resolve() / LOCK_FILE

    def acquire(self, what: str) -> None:
        """Take the lock for a run described by ``what``, or raise :class:`ProjectBusyError`."""
        if fcntl is None or self.path in self._held:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.holder()
            os.close(fd)
            raise ProjectBusyError(
                f"another toptune run is using this project ({holder}); wait for it to finish or stop it, "
                f"then run again") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "run": what, "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._held[self.path] = fd

    def release(self) -> None:
        fd = self._held.pop(self.path, None)
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    def holder(self) -> str:
        """The holder as the lock file describes it: ``pid 123, kedro run --pipeline __default__, since …``."""
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']}, {info['run']}, since {info['since']}"
        except (OSError, ValueError, KeyError):
            return f"lock file {self.path}"
