"""Every label kind through the library's fast paths, against the live prefix: multi-label (BCE) and
regression (½·squared error on the standardised target) on the cache's stored states give the live
logits and the same training steps; a multi-label run resumed mid-epoch is bit-identical.

The tiny checkpoints and the cache tests' 60 rows, relabelled per kind (``tests/support/kinds.py``).
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from support.cache import config
from support.ddp_worker import splits
from support.kinds import kind_classifier, relabelled
from toptune.cache import predict_cached, prepare_cache
from toptune.config import LoraSettings, ModelConfig, RunConfig, TrainingConfig
from toptune.task import MULTI, REGRESSION
from toptune.train.checkpoint.fingerprint import fingerprint
from toptune.train.checkpoint.resume import Checkpoints, newest_first
from toptune.train.objective import Objective
from toptune.train.recipe import fit, predict

FAST_PATH_KINDS = [MULTI, REGRESSION]  # single-label: tests/cache/test_cache.py


@pytest.mark.parametrize("kind", FAST_PATH_KINDS)
def test_cached_logits_and_loss_gradients_equal_live(tiny_checkpoint, data, tmp_path, kind):
    """The same logits from the cache as from the live prefix, and the same gradient of the kind's loss
    with respect to them (the head and adapters see nothing else of the loss)."""
    data = relabelled(data, kind)
    clf = kind_classifier(tiny_checkpoint, kind, data)
    cache = prepare_cache(clf, data, config(tmp_path))
    objective = Objective(clf.task)
    for split in ("train", "val"):
        live = predict(clf, data[split], 16)
        cached = predict_cached(clf, cache, split, data[split], 16)
        np.testing.assert_array_equal(cached.labels, live.labels)
        np.testing.assert_allclose(cached.logits, live.logits, atol=1e-5, rtol=0)
        grads = []
        for logits in (live.logits, cached.logits):
            z = torch.from_numpy(logits).requires_grad_()
            objective.loss_sum(z, torch.from_numpy(live.labels)).backward()
            grads.append(z.grad.numpy())
        assert np.abs(grads[0]).max() > 1e-3, "the loss does not depend on the logits"
        np.testing.assert_allclose(grads[1], grads[0], atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", FAST_PATH_KINDS)
def test_cached_training_equals_live(tiny_checkpoint, data, tmp_path, kind, plain_sgd):
    """Two epochs on the cache and on the live prefix: the same losses per step, validation metrics and
    trained weights (plain SGD: see tests/cache/test_cache.py's single-label twin)."""
    data = relabelled(data, kind)
    cfg = config(tmp_path, epochs=2, bucket_by_length=False, lr=0.05)
    live_clf, cached_clf = (kind_classifier(tiny_checkpoint, kind, data) for _ in range(2))
    start = {n: p.detach().clone() for n, p in live_clf.model.named_parameters() if p.requires_grad}
    live = fit(live_clf, data, dataclasses.replace(cfg, prefix_mode="no_grad"))
    cached = fit(cached_clf, data, cfg)
    assert len(live.steps) == len(cached.steps) == 2 * 5
    np.testing.assert_allclose([s["loss"] for s in cached.steps], [s["loss"] for s in live.steps], rtol=1e-5, atol=0)
    metric = "val_macro_f1" if kind == MULTI else "val_rmse"
    np.testing.assert_allclose([e[metric] for e in cached.epochs], [e[metric] for e in live.epochs], rtol=1e-5)
    moved = max(float((p.detach() - start[n]).abs().max()) for n, p in live_clf.model.named_parameters() if n in start)
    assert moved > 1e-3, f"training moved the weights by {moved:.2g} only"
    trained = dict(cached_clf.model.named_parameters())
    for name, p in live_clf.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(trained[name], p, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_multi_label_resume_mid_epoch_is_bit_identical(tiny_qwen3, tmp_path):
    data = relabelled(splits(str(tiny_qwen3), n_train=25), MULTI)  # 4 batches of 8 an epoch
    cfg = RunConfig(
        model=ModelConfig(name_or_path=str(tiny_qwen3), trainable_layers=2),
        lora=LoraSettings(r=4, alpha=8),
        training=TrainingConfig(
            prefix_mode="no_grad", epochs=3, batch_size=8, eval_batch_size=16, log_every=1, progress=False
        ),
    )

    def trained(directory, resume):
        torch.manual_seed(0)
        clf = kind_classifier(tiny_qwen3, MULTI, data)
        ckpts = Checkpoints(directory, fingerprint(cfg, 1, "cpu", data), resume, 3, keep=100)
        result = fit(clf, data, cfg.training, ckpts)
        return result, {n: p.detach().clone() for n, p in clf.model.named_parameters() if p.requires_grad}

    full, weights = trained(tmp_path / "a", "never")
    mid = next(c for c in newest_first(tmp_path / "a") if c.step == 6)  # epoch 1, 2 of its 4 batches done
    (tmp_path / "b").mkdir()
    shutil.copytree(mid.path, tmp_path / "b" / mid.path.name)
    again, weights2 = trained(tmp_path / "b", "auto")
    assert again.resumed_from == str(tmp_path / "b" / mid.path.name)
    assert again.steps == full.steps and again.best == full.best and "val_macro_f1" in full.epochs[0]
    assert [e["val_loss"] for e in again.epochs] == [e["val_loss"] for e in full.epochs]
    for name in weights:
        assert torch.equal(weights[name], weights2[name]), name
