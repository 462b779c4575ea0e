"""What a killed process leaves behind, and how a later run clears it: the one sweeper.

Every temporary file or directory toptune writes is named by :func:`toptune.io.atomic.temp_path`:
``.<name>.tmp-<host>-<pid>`` (a cache shard, a checkpoint, a bundle being written) or
``.<name>.old-<host>-<pid>`` (the previous directory, kept aside during a swap) beside its final
``<name>``. When ``<host>`` is this machine and ``<pid>`` is no longer alive there, it is debris: a
``.tmp-`` one is removed; an ``.old-`` one is removed too, unless ``<name>`` itself is missing (the
process died between the two renames of a swap), in which case it is put back. Another machine's
names are left alone (whether its process lives cannot be seen from here). Names of older versions,
``.<name>.tmp-<pid>`` without a host, are taken as this machine's.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

DEBRIS = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?:(?P<host>.+)-)?(?P<pid>\d+)$")


def hostname() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (signal 0 probes without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def is_debris(name: str, own_pid: int | None = None) -> re.Match | None:
    """The match of ``name`` when it is a temporary name of a dead process on this host (or of
    ``own_pid``, a process starting afresh); else None."""
    m = DEBRIS.match(name)
    if m is None or m["host"] not in (None, hostname()):
        return None
    pid = int(m["pid"])
    return m if pid == own_pid or not pid_alive(pid) else None


def clear_debris(parent: str | Path, own_pid: int | None = None) -> list[str]:
    """Clear the debris of dead processes on this host (and of ``own_pid``) in ``parent``; returns
    what was done, one line per file or directory."""
    parent, done = Path(parent), list[str]()
    if not parent.is_dir():
        return done
    for entry in sorted(parent.iterdir()):
        m = is_debris(entry.name, own_pid)
        if m is None:
            continue
        final = parent / m["name"]
        if m["kind"] == "old" and entry.is_dir() and not final.exists():
            entry.rename(final)
            done.append(f"restored {final} from {entry.name}")
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        done.append(f"removed {entry}")
    return done
