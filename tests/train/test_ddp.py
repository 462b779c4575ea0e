"""Several processes through torchrun, started the way a user starts them (gloo, 2 CPU processes,
OMP_NUM_THREADS=1), against one process with the same global batch.

- the library in the live prefix modes, and in no_grad for a multi-label and a regression model
  (``tests/support/ddp_worker.py`` under ``torchrun``): the same losses (rtol 1e-4), adapter (atol 1e-5),
  validation metrics and test logits, with a process holding an empty share of the last batch;
- ``torchrun --nproc-per-node 2 .venv/bin/kedro run`` in cache mode: the same loss trajectory and
  adapter, the same test metrics, exactly one MLflow run, and every file written by rank 0 only, once,
  but the prefix cache's shards, which each process builds its share of (an audit hook in each process
  records what it opens for writing, creates, renames, removes or connects to).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from support.ddp_worker import RUNS
from support.kedro_proc import BIN, run, torchrun
from support.optim import assert_adamw_runs_alike
from support.project import make_project
from toptune.task import REGRESSION

pytestmark = pytest.mark.slow  # torchrun and `kedro run` subprocesses

SUPPORT = Path(__file__).resolve().parents[1] / "support"


def test_library_live_modes_two_processes_equal_one(tiny_qwen3, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    worker = str(SUPPORT / "ddp_worker.py")
    run([sys.executable, worker, str(tiny_qwen3), str(one)], tmp_path)
    run(torchrun(worker, str(tiny_qwen3), str(two)), tmp_path)
    for mode, kind in RUNS:
        a, b = (torch.load(d / f"{mode}.{kind}.pt", weights_only=True) for d in (one, two))
        mode = f"{mode} {kind}"  # noqa: PLW2901  # the failure messages' name
        assert (a["world"], b["world"]) == (1, 2)
        assert a["optimizers"] == b["optimizers"] and set(a["optimizers"]) == {"SGD"}, (
            "the worker trains with plain SGD"
        )
        assert a["moved"] > 1e-3, f"{mode}: training moved the adapter by {a['moved']:.2g} only"
        assert len(a["losses"]) == len(b["losses"]) == 16  # 8 global batches (the last one of 1 row) × 2 epochs
        np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-4, err_msg=mode)
        assert a["adapter"].keys() == b["adapter"].keys()
        for name in a["adapter"]:
            torch.testing.assert_close(b["adapter"][name], a["adapter"][name], atol=1e-5, rtol=0, msg=f"{mode} {name}")
        torch.testing.assert_close(b["test_logits"], a["test_logits"], atol=1e-5, rtol=0)
        metric = "val_rmse" if kind == REGRESSION else "val_macro_f1"
        # a classification metric counts rows (equal); rmse sums last-bit-apart logits (close)
        assert a["best"]["epoch"] == b["best"]["epoch"], mode
        np.testing.assert_allclose([e[metric] for e in b["epochs"]], [e[metric] for e in a["epochs"]], rtol=1e-5)


def audit_rows(path: Path) -> list[tuple[str, str, str]]:
    return [tuple(line.split("\t")) for line in path.read_text().splitlines()]


def test_kedro_run_under_torchrun_equals_one_process(reference_run, tmp_path):
    one, params = reference_run
    two = make_project(tmp_path / "two")
    params += ",training.resume=never"
    audit = tmp_path / "audit" / "writes.tsv"
    audit.parent.mkdir()
    run(torchrun(str(BIN / "kedro"), "run", "--params", params), two, audit)

    a, b = (json.loads((p / "data/08_reporting/train_summary.json").read_text()) for p in (one, two))
    assert (a["processes"], b["processes"]) == (1, 2)
    assert [s["step"] for s in a["steps"]] == [s["step"] for s in b["steps"]] and len(a["steps"]) == 48
    np.testing.assert_allclose([s["loss"] for s in b["steps"]], [s["loss"] for s in a["steps"]], rtol=1e-4)
    wa, wb = (load_file(p / "data/06_models/adapter/adapter_model.safetensors") for p in (one, two))
    # The library's AdamW, as a user runs it: all-reduced gradients differ from one process's in the last
    # bits, and AdamW may turn that into an lr-sized step where a gradient is near zero; so no element
    # further apart than AdamW's steps allow, and all but a few within 1e-5 (tests/support/optim.py).
    # Each step's row holds the scheduler's next rate: one more at the peak covers the first step.
    lrs = [s["lr"] for s in a["steps"]]
    assert_adamw_runs_alike(wa, wb, lrs + [max(lrs)], atol=1e-5)
    ma, mb = (json.loads((p / "data/08_reporting/metrics.json").read_text()) for p in (one, two))
    assert (ma["accuracy"], ma["macro_f1"]) == (mb["accuracy"], mb["macro_f1"])

    db = sqlite3.connect(two / "mlflow.db")
    assert db.execute("select status from runs").fetchall() == [("FINISHED",)], (
        "one MLflow run per job, not one per process"
    )
    assert db.execute("select count(*) from metrics where key = 'train.loss'").fetchone()[0] == 48

    # Kedro logs "Using 'conf/logging.yml'…" to toptune.log in every process before any project code runs;
    # settings.py then leaves that file to rank 0. Every other path counts.
    rows = [r for r in audit_rows(audit) if r[2] != "toptune.log"]
    assert {r for r, _, _ in rows} == {"0", "1"}
    # Rank 1 built its share of the prefix cache's shards (its files only, never the manifest); nothing else.
    elsewhere = [x for x in rows if x[0] != "0" and not x[2].startswith("data/04_feature/prefix_cache")]
    assert not elsewhere, f"a process other than rank 0 touched the project: {elsewhere[:5]}"
    shards = {p for r, e, p in rows if r == "1" and e in ("os.rename", "os.replace")}
    assert shards and not any(p.endswith("manifest.json") for p in shards), shards
    # every file opened for writing once, but a prefix cache's lock, which each process using the cache holds
    writes = Counter(
        p for _, event, p in rows if event == "open" and p.startswith("data/") and not p.endswith("/.lock")
    )
    locks = [
        r
        for r, event, p in rows
        if event == "open" and p.startswith("data/04_feature/prefix_cache/") and p.endswith("/.lock")
    ]
    assert sorted(locks) == ["0", "1"], locks
    assert {
        "data/08_reporting/metrics.json",
        "data/08_reporting/train_summary.json",
        "data/04_feature/prefix_cache.json",
    } <= writes.keys()
    assert ("0", "os.rename", "data/06_models/adapter") in rows  # the adapter bundle, staged then renamed into place
    assert max(writes.values()) == 1, f"files written more than once: {[p for p, n in writes.items() if n > 1]}"
