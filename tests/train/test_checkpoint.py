"""Checkpoints, resume and the best epoch, in the library (one process, the tiny Qwen3, 4 steps an epoch).

Resume bit for bit from a checkpoint in the middle of an epoch; the fingerprint naming what changed;
``auto`` skipping (with a log line) and a path refusing (one line) a checkpoint of another
configuration; atomic writes; the kept epoch is the best one's, with early stopping.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil

import numpy as np
import pytest
import torch

from support.ddp_worker import ID2LABEL, splits
from toptune.config import (
    ConfigError,
    LoraSettings,
    ModelConfig,
    RunConfig,
    TrainingConfig,
    parse_group,
)
from toptune.train import distributed
from toptune.train.checkpoint.fingerprint import FORMAT, fingerprint
from toptune.train.checkpoint.resume import (
    CheckpointError,
    Checkpoints,
    newest_first,
    read,
    select,
)
from toptune.train.checkpoint.store import STATE, write
from toptune.train.recipe import build_classifier, fit, training_setup


@pytest.fixture(scope="module")
def data(tiny_qwen3):
    return splits(str(tiny_qwen3), n_train=25)  # 4 global batches of 8 (the last one of 1 row)


def run_config(tiny_qwen3, **training) -> RunConfig:
    base = dict(prefix_mode="no_grad", epochs=3, batch_size=8, eval_batch_size=16, log_every=1, progress=False)
    return RunConfig(
        model=ModelConfig(name_or_path=str(tiny_qwen3), trainable_layers=2),
        lora=LoraSettings(r=4, alpha=8),
        training=TrainingConfig(**{**base, **training}),
    )


def trained(cfg: RunConfig, data, directory, resume="never", every=None, keep=100):
    torch.manual_seed(0)
    clf = build_classifier(cfg.model, cfg.lora, ID2LABEL, seed=0, device="cpu")
    ckpts = Checkpoints(directory, fingerprint(cfg, 1, "cpu", data), resume, every, keep=keep)
    result = fit(clf, data, cfg.training, ckpts)
    return result, {n: p.detach().clone() for n, p in clf.model.named_parameters() if p.requires_grad}


@pytest.mark.slow
def test_resume_mid_epoch_is_bit_identical(tiny_qwen3, data, tmp_path):
    cfg = run_config(tiny_qwen3)
    full, weights = trained(cfg, data, tmp_path / "a", every=3)
    saved = newest_first(tmp_path / "a")
    # 4 steps per epoch: every 3rd step, and each epoch's end (steps 4, 8, 12).
    assert sorted(c.step for c in saved) == [3, 4, 6, 8, 9, 12]
    mid = next(c for c in saved if c.step == 6)  # epoch 1, 2 of its 4 batches done
    assert (mid.meta["epoch"], mid.meta["batch"]) == (1, 2)
    part = tmp_path / "b"
    part.mkdir()
    shutil.copytree(mid.path, part / mid.path.name)
    again, weights2 = trained(cfg, data, part, resume="auto", every=3)
    assert again.resumed_from == str(part / mid.path.name)
    assert again.steps == full.steps and again.epochs[1:] and again.best == full.best
    assert [e["val_loss"] for e in again.epochs] == [e["val_loss"] for e in full.epochs]
    for name in weights:
        assert torch.equal(weights[name], weights2[name]), name


@pytest.mark.slow
def test_another_configuration_is_skipped_or_refused(tiny_qwen3, data, tmp_path, caplog):
    cfg = run_config(tiny_qwen3, epochs=1)
    trained(cfg, data, tmp_path, every=2)
    ck = newest_first(tmp_path)[0]
    other = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, lr=1e-3))
    with caplog.at_level(logging.INFO, logger="toptune.train.checkpoint.resume"):
        result, _ = trained(other, data, tmp_path, resume="auto")
    assert result.resumed_from is None
    assert f"checkpoint {ck.path} skipped: training.lr changed (0.003 → 0.001)" in caplog.text
    with pytest.raises(CheckpointError) as err:
        trained(other, data, tmp_path, resume=str(ck.path))
    assert (
        str(err.value)
        == f"training.resume={ck.path}: refused, made for another configuration: training.lr changed (0.003 → 0.001)"
    )
    # What does not change the steps does not refuse: the same run, other progress / patience / checkpoint settings.
    same = dataclasses.replace(
        cfg,
        training=dataclasses.replace(
            cfg.training, progress=True, early_stopping_patience=3, checkpoint_every=7, eval_batch_size=4
        ),
    )
    assert trained(same, data, tmp_path, resume=str(ck.path))[0].resumed_from == str(ck.path)
    # Another world size, other data: refused, naming the field.
    two = fingerprint(cfg, 2, "cpu", data)
    assert "world changed (1 → 2)" in str(
        pytest.raises(CheckpointError, Checkpoints(tmp_path, two, str(ck.path)).restore).value
    )
    fewer = {
        **data,
        "train": data["train"].take(np.arange(len(data["train"]) - 1)),
    }
    assert "data changed" in str(
        pytest.raises(
            CheckpointError, Checkpoints(tmp_path, fingerprint(cfg, 1, "cpu", fewer), str(ck.path)).restore
        ).value
    )


@pytest.mark.slow
def test_auto_prefix_mode_continues_in_the_checkpoints_mode(tiny_qwen3, data, tmp_path, caplog):
    # A run of prefix_mode auto that trained in no_grad mode, then killed: measured again, auto might pick
    # the cache (other steps: bucketed batches); the resumed run keeps the checkpoint's mode instead.
    cfg = run_config(tiny_qwen3, epochs=2, prefix_mode="auto")
    clf = build_classifier(cfg.model, cfg.lora, ID2LABEL, seed=0, device="cpu")
    training, ckpts = training_setup(cfg, clf, data, decided_mode="no_grad", directory=tmp_path)
    assert training.prefix_mode == "no_grad" and ckpts.fingerprint["params"]["training.prefix_mode"] == "no_grad"
    fit(clf, data, training, ckpts)
    with caplog.at_level(logging.INFO, logger="toptune.train.recipe"):
        again, ckpts = training_setup(cfg, clf, data, decided_mode="cache", directory=tmp_path)
    assert again.prefix_mode == "no_grad" and ckpts.choose() is not None
    assert "training.prefix_mode auto: no_grad, as checkpoint" in caplog.text and "(measured now: cache)" in caplog.text
    # A fresh start (no checkpoint of this configuration) takes the measured choice.
    fresh, _ = training_setup(cfg, clf, data, decided_mode="cache", directory=tmp_path / "none")
    assert fresh.prefix_mode == "cache"


@pytest.mark.slow
def test_checkpoints_are_atomic_and_pruned(tiny_qwen3, data, tmp_path):
    cfg = run_config(tiny_qwen3, epochs=1)
    trained(cfg, data, tmp_path, every=1, keep=3)
    kept = newest_first(tmp_path)
    assert [c.step for c in kept] == [4, 3, 2] and len(list(tmp_path.iterdir())) == 3
    (tmp_path / f".{kept[0].path.name}.tmp-{2**22 + 7}").mkdir()  # a write killed before its rename: never listed
    torn = kept[0].path
    with open(torn / STATE, "r+b") as f:  # a torn state file: not a complete checkpoint
        f.truncate(100)
    assert [c.step for c in newest_first(tmp_path)] == [3, 2]
    with pytest.raises(CheckpointError, match="missing or truncated"):
        read(torn)
    # The next write clears a dead process's temporary directory.
    Checkpoints(tmp_path, fingerprint(cfg, 1, "cpu", data)).save({"epoch": 9, "step": 99}, {})
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_best_epoch_is_kept(tiny_qwen3, data, tmp_path):
    for metric in ("macro_f1", "loss"):
        cfg = run_config(tiny_qwen3, epochs=3, lr=2e-2, metric_for_best=metric)
        result, weights = trained(cfg, data, tmp_path / metric)
        values = [e[f"val_{metric}"] for e in result.epochs]
        best = values.index(min(values) if metric == "loss" else max(values))  # the first of equals
        assert result.best["epoch"] == best and result.best["value"] == values[best] and result.best["metric"] == metric
        # The model ends with that epoch's weights: those its epoch-end checkpoint holds.
        end_of_best = next(
            c for c in newest_first(tmp_path / metric) if c.meta["epoch"] == best + 1 and c.meta["batch"] == 0
        )
        state = end_of_best.load_state()
        for name, w in weights.items():
            assert torch.equal(w, state["trainable"][name]), (metric, name)


@pytest.mark.slow
def test_early_stopping(tiny_qwen3, data, tmp_path):
    # A learning rate that changes no prediction: accuracy never improves after epoch 0.
    cfg = run_config(tiny_qwen3, epochs=5, lr=1e-12, metric_for_best="accuracy", early_stopping_patience=1)
    result, _ = trained(cfg, data, tmp_path)
    assert len(result.epochs) == 2 and result.best["epoch"] == 0 and result.best["stopped_early"]
    assert "stopped early: no improvement in 1 epoch" in result.best["reason"]


def test_parameters_checked(monkeypatch):
    for field, value in (
        ("metric_for_best", "f1"),
        ("checkpoint_every", -1),
        ("early_stopping_patience", -2),
        ("resume", ""),
    ):
        with pytest.raises(ConfigError, match=f"training.{field}="):
            parse_group(TrainingConfig, {field: value}, "training")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"training.batch_size=16 does not divide by the 3 processes"):
        distributed.check_divides(16)


def test_one_selection_answers_with_the_checkpoint_or_why(tmp_path):
    fp = {"format": FORMAT, "params": {"training.lr": 0.1}, "model": "m", "data": "d", "world": 1, "device": "cpu"}
    other = {**fp, "params": {"training.lr": 0.2}}
    assert select(tmp_path, fp, "never").why == "resume_never"
    assert select(tmp_path, fp, "auto").why == "none_match"
    meta = {"format": FORMAT, "epoch": 0, "batch": 1}
    mine = write(tmp_path, "a-e000-s0000001", {}, {**meta, "fingerprint": fp, "run_id": "r1", "step": 1})
    theirs = write(tmp_path, "b-e000-s0000002", {}, {**meta, "fingerprint": other, "run_id": "r2", "step": 2})
    chosen = select(tmp_path, fp, "auto")
    assert chosen.why == "newest_match" and chosen.get().path == mine.path
    assert [(c.path, why) for c, why in chosen.skipped] == [(theirs.path, "training.lr changed (0.2 → 0.1)")]
    assert select(tmp_path, fp, str(mine.path)).why == "given"
    refused = select(tmp_path, fp, str(theirs.path))
    assert refused.why == "refused" and refused.checkpoint is None
    assert (
        refused.message
        == f"training.resume={theirs.path}: refused, made for another configuration: training.lr changed (0.2 → 0.1)"
    )
    with pytest.raises(CheckpointError, match="made for another configuration"):
        refused.get()
    # The tracking layer's reasons (``also``) pass a checkpoint over; a reopened run's checkpoint that cannot go on
    # refuses.
    passed = select(tmp_path, fp, "auto", also=lambda ck: ["its MLflow run r1 finished"])
    assert passed.why == "none_match" and [why for _, why in passed.skipped][-1] == "its MLflow run r1 finished"
    assert select(tmp_path, other, "auto", run_id="r1").message.startswith(
        f"checkpoint {mine.path} of MLflow run r1 cannot continue it"
    )
