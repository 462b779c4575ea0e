"""One run at a time in a project: an exclusive lock (``filelock``) on ``.toptune.lock`` at the project root.

Every run writes to the same data files, so a second run refuses, in one line naming the first, while
the first holds the lock. The lock is an ``flock``, which the kernel drops when its process dies, so a
killed run's lock is simply taken by the next one. The holder writes who it is into the lock file (a
contender opens it without truncating it, so it can name the holder). Under ``torchrun`` only the
process with ``RANK`` unset or ``0`` takes it: the other ranks of the same job go through.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from filelock import FileLock, Timeout

from toptune.errors import ProjectBusyError

LOCK_FILE = ".toptune.lock"


def takes_lock(env: dict[str, str] | None = None) -> bool:
    """Whether this process takes the project lock: not a ``torchrun`` rank other than 0."""
    return (env if env is not None else os.environ).get("RANK", "0") in ("", "0")


class ProjectLock:
    """The project's lock; re-entrant within one process (sequential runs in one Python session)."""

    _held: dict[Path, FileLock] = {}  # lock path → the held lock (one per path and process: flock is per open file)

    def __init__(self, project_path: str | Path):
        self.path = Path(project_path).resolve() / LOCK_FILE

    def acquire(self, what: str) -> None:
        """Take the lock for a run described by ``what``, or raise :class:`ProjectBusyError`."""
        if self.path in self._held:
            return
        lock = FileLock(self.path, timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            raise ProjectBusyError(
                f"another toptune run is using this project ({self.holder()}); wait for it to finish or stop it, "
                f"then run again"
            ) from None
        with open(self.path, "r+") as f:  # the lock file stays in place on release: the next holder rewrites it
            f.truncate(0)
            f.write(json.dumps({"pid": os.getpid(), "run": what, "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        self._held[self.path] = lock

    def release(self) -> None:
        lock = self._held.pop(self.path, None)
        if lock is not None:
            lock.release(force=True)

    def holder(self) -> str:
        """The holder as the lock file describes it: ``pid 123, kedro run --pipeline __default__, since …``."""
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']}, {info['run']}, since {info['since']}"
        except (OSError, ValueError, KeyError):
            return f"lock file {self.path}"
