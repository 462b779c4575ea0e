"""kill -9 and resume, on a real training subprocess: ``kedro run`` is killed (SIGKILL, the whole process
group) as soon as the checkpoint of step 28 exists (epoch 2, 4 of its 24 batches done: the resumed run
restores the data order's position, the RNG states, epoch 1's history and best weights), run again with
``training.resume=auto``, and must end with the uninterrupted run's adapter bit for bit (CPU), in one
MLflow run holding each step's metric once.
A checkpoint of another configuration given as a path is refused in one line before anything runs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from safetensors.numpy import load_file

from support.kedro_proc import BIN, ENV, run
from support.project import make_project
from toptune.train.checkpoint.resume import CheckpointError, newest_first

pytestmark = pytest.mark.slow  # `kedro run` subprocesses killed and resumed

CHECKPOINTS = "data/06_models/checkpoints"
KILL_AT = 28
"""The step whose checkpoint triggers the kill: a deterministic point (a random delay after the first
checkpoint landed anywhere from step 2 on, and the machine's speed moved it further)."""


def kill_at_checkpoint(project: Path, params: str, step: int) -> int:
    """Start ``kedro run`` in ``project``, SIGKILL its process group as soon as the complete checkpoint of
    ``step`` appears (polled every 10 ms); returns the newest checkpoint's step at that moment."""
    log = open(project / "killed.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "kedro"), "run", "--params", params],
        cwd=project,
        env={**os.environ, **ENV},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not any(c.step >= step for c in newest_first(project / CHECKPOINTS)):
        assert proc.poll() is None, (
            f"the run ended before step {step}'s checkpoint:\n{(project / 'killed.log').read_text()[-3000:]}"
        )
        assert time.monotonic() < deadline, f"no checkpoint of step {step} within 600 s"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert proc.returncode == -signal.SIGKILL
    return newest_first(project / CHECKPOINTS)[0].step


def test_kill_9_then_resume_is_bit_identical(reference_run, tmp_path, monkeypatch):
    ref, params = reference_run
    job = make_project(tmp_path / "job")
    killed_at = kill_at_checkpoint(job, f"{params},training.checkpoint_every=2,training.resume=auto", KILL_AT)
    assert KILL_AT <= killed_at < 48, f"killed with the checkpoint of step {killed_at} the newest"
    assert not (job / "data/08_reporting/metrics.json").exists(), "training ended before the kill"

    out = run(
        [str(BIN / "kedro"), "run", "--params", f"{params},training.checkpoint_every=2,training.resume=auto"], job
    )
    assert "resuming from checkpoint" in out.stdout and "continuing MLflow run" in out.stdout

    a, b = (load_file(p / "data/06_models/adapter/adapter_model.safetensors") for p in (ref, job))
    assert a.keys() == b.keys()
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, (
        f"killed after step {killed_at}'s checkpoint: adapter differs from the uninterrupted run in {differ[:3]}"
    )
    sa, sb = (json.loads((p / "data/08_reporting/train_summary.json").read_text()) for p in (ref, job))
    assert sb["steps"] == sa["steps"] and sb["best"] == sa["best"]
    assert sb["resumed_from"] and sa["resumed_from"] is None

    db = sqlite3.connect(job / "mlflow.db")
    assert db.execute("select status from runs").fetchall() == [("FINISHED",)], "kill -9 + resume is one MLflow run"
    dup = db.execute("select key, step, count(*) from metrics group by key, step having count(*) > 1").fetchall()
    assert not dup, f"steps logged twice: {dup[:3]}"
    steps = [s for (s,) in db.execute("select step from metrics where key = 'train.loss' order by step")]
    assert steps == list(range(1, 49))
    assert db.execute("select value from tags where key = 'best.epoch'").fetchone() == (str(sa["best"]["epoch"]),)

    # A checkpoint of another configuration, given as a path: refused in one line, before any run starts.
    monkeypatch.chdir(job)
    bootstrap_project(job)
    other = newest_first(job / CHECKPOINTS)[0].path
    runtime = {
        "data": {"sample_rows": 240},
        "training": {
            "epochs": 2,
            "batch_size": 8,
            "log_every": 1,
            "progress": False,
            "prefix_mode": "cache",
            "lr": 0.01,
            "resume": str(other),
        },
        "model": {"name_or_path": params.split("model.name_or_path=")[1].split(",")[0]},
    }
    with KedroSession.create(project_path=job, runtime_params=runtime) as session:
        with pytest.raises(CheckpointError) as err:
            session.run()
    assert "\n" not in str(err.value)
    assert (
        f"training.resume={other}: refused, made for another configuration: training.lr changed (0.003 → 0.01)"
        == str(err.value)
    )
    assert db.execute("select count(*) from runs").fetchone() == (1,)
