"""What a killed process leaves behind, and how a later run clears it.

Every temporary directory toptune writes is named ``.<name>.tmp-<pid>`` (a bundle or prefix cache being
written) or ``.<name>.old-<pid>`` (the previous one, kept aside during a swap) beside its final
``<name>``. When the pid is no longer alive on this host the directory is debris: a ``.tmp-`` one is
removed; an ``.old-`` one is removed too, unless ``<name>`` itself is missing (the process died between
the two renames of a swap), in which case it is put back.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

DEBRIS = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


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


def clear_debris(parent: str | Path, own_pid: int | None = None) -> list[str]:
    """Clear the debris of dead processes (and of ``own_pid``, a process starting afresh) in ``parent``;
    returns what was done, one line per directory."""
    parent, done = Path(parent), []
    if not parent.is_dir():
        return done
    for entry in sorted(parent.iterdir()):
        m = DEBRIS.match(entry.name)
        if not (m and entry.is_dir()):
            continue
        pid = int(m["pid"])
        if pid != own_pid and pid_alive(pid):
            continue
        final = parent / m["name"]
        if m["kind"] == "old" and not final.exists():
            entry.rename(final)
            done.append(f"restored {final} from {entry.name}")
        else:
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {entry}")
    return done
