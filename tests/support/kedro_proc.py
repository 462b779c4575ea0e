"""Kedro and torchrun in subprocesses, as a user runs them (tests/train/test_ddp.py, tests/train/test_resume.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {
    "KEDRO_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "COLUMNS": "200",
}
KEDRO_PARAMS = (
    "data.sample_rows=240,training.epochs=2,training.batch_size=8,training.log_every=1,"
    "training.progress=false,training.prefix_mode=cache"
)

# Imported by every Python process of a run (PYTHONPATH): records, per rank, each path under the project
# it opens for writing, creates, renames onto, removes or opens as a sqlite database.
AUDIT = """
import os, sys
_log, _root = os.environ.get("WRITE_AUDIT"), os.getcwd() + os.sep
_rank = os.environ.get("RANK", "-")
_busy = []
def _hook(event, args):
    if _busy or not _log:
        return
    path = None
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1] or "", args[2] or 0
        if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            path = args[0]
    elif event in ("os.rename", "os.replace"):
        path = args[1]
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "sqlite3.connect"):
        path = args[0]
    if path is None:
        return
    dir_fd = args[-1] if event in ("os.mkdir", "os.remove", "os.rmdir") else None
    if isinstance(dir_fd, int) and dir_fd >= 0:  # relative to an open directory (shutil.rmtree's way)
        path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), os.fsdecode(path))
    path = os.path.abspath(os.fsdecode(path))
    if path.startswith(_root):
        _busy.append(1)
        try:
            with open(_log, "a") as f:
                f.write(f"{_rank}\\t{event}\\t{path[len(_root):]}\\n")
        finally:
            _busy.pop()
sys.addaudithook(_hook)
"""


def run(cmd: list[str], cwd: Path, audit: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **ENV}
    if audit is not None:
        (audit.parent / "sitecustomize.py").write_text(AUDIT)
        env.update(PYTHONPATH=str(audit.parent), WRITE_AUDIT=str(audit))
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{' '.join(cmd[:4])} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def torchrun(*args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc-per-node", "2", *args]
