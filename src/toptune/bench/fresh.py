"""One measurement in a fresh Python process (its own peak memory, its own allocator state): the parent
runs ``python -m <module> --point JOB --result FILE`` and reads the figures the child wrote."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def run_fresh(module: str, job: dict, name: str) -> dict:
    """The figures ``module``'s child wrote for ``job``; a failed child raises naming ``name`` and its last line."""
    with tempfile.TemporaryDirectory(prefix="toptune-point-") as tmp:
        out = Path(tmp) / "point.json"
        proc = subprocess.run(
            [sys.executable, "-m", module, "--point", json.dumps(job), "--result", str(out)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"{name} failed (exit {proc.returncode}): {tail[0]}")
        return json.loads(out.read_text())


def is_child(argv: list[str]) -> bool:
    return "--point" in argv


def child_main(argv: list[str], measure: Callable[[dict], dict]) -> None:
    """The child: ``--point JOB --result FILE`` → ``measure(JOB)`` written to FILE."""
    p = argparse.ArgumentParser()
    p.add_argument("--point", required=True)
    p.add_argument("--result", required=True)
    a = p.parse_args(argv)
    Path(a.result).write_text(json.dumps(measure(json.loads(a.point))))
