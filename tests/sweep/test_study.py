"""The study on a real tiny Qwen3 and a real sqlite Optuna storage: a machine whose best trial ran elsewhere
(its weights in another machine's keep_dir) trains that trial again from its parameters, and a grid sweep
over K trains every K once on one prefix cache."""

from __future__ import annotations

import contextlib
import json

import pytest

from support.ddp_worker import ID2LABEL, splits
from toptune.config import parse_params
from toptune.sweep import run_sweep

pytestmark = pytest.mark.slow  # real training runs


@contextlib.contextmanager
def untracked(number, params):
    yield lambda name, value, step: None


def config(tmp_path, tiny_qwen3, sweep: dict):
    return parse_params(
        {
            "model": {"name_or_path": str(tiny_qwen3), "trainable_layers": 1},
            "training": {"epochs": 1, "batch_size": 8, "progress": False, "cache_dir": str(tmp_path / "cache")},
            "sweep": {"prune": False, **sweep},
        }
    )


def test_a_machine_without_the_best_trials_weights_trains_it_again(tmp_path, tiny_qwen3):
    cfg = config(
        tmp_path, tiny_qwen3, {"trials": 3, "space": {"training.lr": {"low": 1e-3, "high": 3e-2, "log": True}}}
    )
    data = {k: v for k, v in splits(str(tiny_qwen3)).items() if k != "test"}
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    here = run_sweep(cfg, data, ID2LABEL, storage, tmp_path / "kept-here", untracked)
    assert here.retrained is None and here.classifier is not None  # its own best, loaded back
    elsewhere = run_sweep(cfg, data, ID2LABEL, storage, tmp_path / "kept-elsewhere", untracked)
    assert [t["number"] for t in elsewhere.trials] == [0, 1, 2]  # no trial run again, the study is complete
    assert elsewhere.best == here.best and elsewhere.classifier is not None
    assert elsewhere.retrained == pytest.approx(here.best["value"], abs=1e-9)  # same seed, data and machine
    kept = json.loads((tmp_path / "kept-elsewhere" / "trial.json").read_text())
    assert kept["trial"] == here.best["number"] and kept["params"] == here.best["params"]
    mine = dict(here.classifier.model.named_parameters())
    for name, p in elsewhere.classifier.model.named_parameters():
        if p.requires_grad:
            assert (p - mine[name]).abs().max() < 1e-5, name


def test_a_grid_sweep_over_k_trains_each_k_once_on_one_cache(tmp_path, tiny_qwen3):
    cfg = config(
        tmp_path,
        tiny_qwen3,
        {"trials": 10, "space": {"model.trainable_layers": {"choices": [1, 2, 3]}}, "sampler": "grid"},
    )
    data = {k: v for k, v in splits(str(tiny_qwen3)).items() if k != "test"}
    result = run_sweep(cfg, data, ID2LABEL, f"sqlite:///{tmp_path / 'optuna.db'}", tmp_path / "kept", untracked)
    assert sorted(t["params"]["model.trainable_layers"] for t in result.trials) == [1, 2, 3]  # the grid, not 10
    assert all(t["state"] == "COMPLETE" for t in result.trials) and result.cache_builds == 1
