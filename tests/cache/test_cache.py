"""The prefix cache: fingerprint, corruption detection, reuse, and equivalence with the no_grad path.

Tiny checkpoints (4 blocks, hidden 64) and 60 rows of the bundled table.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from support.cache import config, stored_rows
from support.classifiers import (  # the tiny classifier with random adapter weights
    ID2LABEL,
    classifier,
)
from toptune.cache import (
    CacheInvalid,
    bucketed_indices,
    fingerprint,
    fit_cached,
    load_cache,
    padding_fraction,
    predict_cached,
    prepare_cache,
)
from toptune.cache.fingerprint import fingerprint_key
from toptune.config import DataConfig, LoraSettings, ModelConfig, TrainingConfig, parse_params
from toptune.data.batches import batch_indices, rows_batch
from toptune.model.load import backbone
from toptune.prefix.forward import run_prefix
from toptune.train.recipe import build_classifier, fit, predict

FIELDS = ("model_weights", "first_trainable_block", "tokenizer", "max_length", "dtype", "data")


# ---------------------------------------------------------------------------------------------------
# Fingerprint, reuse, corruption
# ---------------------------------------------------------------------------------------------------


def test_build_then_reuse(tiny_qwen3, data, tmp_path):
    clf, cfg = classifier(tiny_qwen3), config(tmp_path)
    built = prepare_cache(clf, data, cfg)
    assert built.status == "built" and built.bytes > 0 and built.build_seconds is not None
    assert built.path == tmp_path / "cache" / fingerprint_key(built.fingerprint)  # one directory per fingerprint
    manifest = json.loads((built.path / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train", "val", "test"}
    assert {s["examples"] for s in manifest["splits"].values()} == {36, 12}

    def stamps():  # every file of the cache but its use stamp, which a reuse touches
        return {p.name: p.stat().st_mtime_ns for p in built.path.iterdir() if p.name != ".used"}

    before, used = stamps(), (built.path / ".used").stat().st_mtime_ns
    again = prepare_cache(classifier(tiny_qwen3), data, cfg)  # a fresh load of the same model
    assert again.status == "reused" and again.path == built.path
    assert stamps() == before, "a reuse rewrote files"
    assert (built.path / ".used").stat().st_mtime_ns >= used
    for name in data:
        assert torch.equal(stored_rows(again, name, data[name]), stored_rows(built, name, data[name]))
        np.testing.assert_array_equal(again.lengths(name), data[name].lengths())
    # Stored rows are the live prefix's hidden states of each example, unpadded.
    enc = data["val"]
    b = rows_batch(enc, np.arange(len(enc)), clf.pad_token_id)
    live = run_prefix(clf.model, b["input_ids"], b["attention_mask"], clf.first_trainable_block)
    rows = live[b["attention_mask"].bool()]
    torch.testing.assert_close(stored_rows(again, "val", enc), rows, atol=1e-5, rtol=0)


def variants(clf, data, cfg, tiny_qwen3, tokenizer):
    """One (clf, data, cfg) per fingerprint field, each differing from the base in that field only."""
    heavier = classifier(tiny_qwen3)
    with torch.no_grad():
        backbone(heavier.model).layers[0].mlp.down_proj.weight.add_(1e-3)
    tok = copy.deepcopy(tokenizer)
    tok.add_tokens(["<toptune-new-token>"])
    changed = copy.deepcopy(data)
    changed["train"].tokens[changed["train"].offsets[3]] += 1  # one token of one row
    return {
        "model_weights": (heavier, data, cfg),
        "first_trainable_block": (classifier(tiny_qwen3, k=3), data, cfg),
        "tokenizer": (dataclasses.replace(clf, tokenizer=tok), data, cfg),
        "max_length": (clf, data, dataclasses.replace(cfg, max_length=32)),
        "dtype": (clf, data, dataclasses.replace(cfg, cache_dtype="bfloat16")),
        "data": (clf, changed, cfg),
    }


@pytest.mark.slow
def test_each_fingerprint_field_invalidates(tiny_qwen3, tokenizer, data, tmp_path):
    clf, cfg = classifier(tiny_qwen3), config(tmp_path)
    base = prepare_cache(clf, data, cfg)
    assert set(FIELDS) <= set(base.fingerprint)
    for field, (c, d, k) in variants(clf, data, cfg, tiny_qwen3, tokenizer).items():
        fp = fingerprint(c, d, k)
        assert fp[field] != base.fingerprint[field], field
        with pytest.raises(CacheInvalid, match=rf"stale: .*{field} changed"):
            load_cache(base.path, fp)
        other = prepare_cache(c, d, k)  # its own directory, beside the base's
        assert other.status == "built" and other.path != base.path and "no cache at" in other.reason, field
        assert prepare_cache(c, d, k).status == "reused"
        assert prepare_cache(clf, data, cfg).status == "reused", field  # the base's cache is still there


def corrupt(path: Path, kind: str) -> str:
    """Damage the cache at ``path``; returns a pattern of the message that must name the damage."""
    shard = sorted(path.glob("train-*.bin"))[0]
    if kind == "truncated":
        shard.write_bytes(shard.read_bytes()[:-100])
        return "truncated"
    if kind == "bit_flip":
        raw = bytearray(shard.read_bytes())
        raw[len(raw) // 2] ^= 0x01  # inside the hidden states: same size, wrong values
        shard.write_bytes(bytes(raw))
        return "checksum"
    if kind == "missing_shard":
        shard.unlink()
        return "missing"
    if kind == "garbled_manifest":
        (path / "manifest.json").write_text('{"format": 1, "fingerp')
        return "unreadable"
    if kind == "no_manifest":  # an interrupted build
        (path / "manifest.json").unlink()
        return "incomplete"
    raise ValueError(kind)


# `make test-fast`: a bit flip (the hash's job) and a garbled manifest; every kind in `make test`.
SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("truncated", marks=SLOW),
        "bit_flip",
        pytest.param("missing_shard", marks=SLOW),
        "garbled_manifest",
        pytest.param("no_manifest", marks=SLOW),
    ],
)
def test_corruption_is_detected_and_rebuilt(tiny_qwen3, data, tmp_path, kind, caplog):
    clf, cfg = classifier(tiny_qwen3), config(tmp_path)
    good = prepare_cache(clf, data, cfg)
    pattern = corrupt(good.path, kind)
    with pytest.raises(CacheInvalid, match=pattern):
        load_cache(good.path, good.fingerprint)
    with caplog.at_level("WARNING", logger="toptune.cache"):
        rebuilt = prepare_cache(clf, data, cfg)
    assert rebuilt.status == "built" and pattern in rebuilt.reason
    assert any("rebuilding" in r.getMessage() for r in caplog.records)
    assert load_cache(good.path, good.fingerprint).status == "reused"
    for name in data:
        assert torch.equal(stored_rows(rebuilt, name, data[name]), stored_rows(good, name, data[name]))


# ---------------------------------------------------------------------------------------------------
# Equivalence with the no_grad path
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [pytest.param(1, marks=pytest.mark.slow), 2, pytest.param(4, marks=pytest.mark.slow)])
def test_cached_logits_equal_no_grad(tiny_checkpoint, data, tmp_path, k):
    clf = classifier(tiny_checkpoint, k)
    cache = prepare_cache(clf, data, config(tmp_path))
    for split in ("val", "test", "train"):
        live = predict(clf, data[split], 16)
        cached = predict_cached(clf, cache, split, data[split], 16)  # length-bucketed, order restored
        np.testing.assert_array_equal(cached.labels, live.labels)
        np.testing.assert_allclose(cached.logits, live.logits, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2])
def test_training_losses_equal_no_grad(tiny_checkpoint, data, tmp_path, k, plain_sgd):
    """The cache's stored states and the live prefix give the same steps: same losses, same trained weights.

    Trained with plain SGD (``plain_sgd``): the stored and the live states differ in the last bits, and so
    do the gradients; AdamW would turn such a difference, where a gradient is near zero, into an lr-sized
    step (1.6e-5 apart in one element of a LoRA B on an AMD EPYC), SGD keeps it at ``lr·δg``. lr 0.05: the
    weights move by more than 1e-3, a hundred times the tolerance."""
    cfg = config(tmp_path, epochs=2, bucket_by_length=False, lr=0.05)  # the live modes' batches, same order
    live_clf, cached_clf = classifier(tiny_checkpoint, k), classifier(tiny_checkpoint, k)
    start = {n: p.detach().clone() for n, p in live_clf.model.named_parameters() if p.requires_grad}
    live = fit(live_clf, data, dataclasses.replace(cfg, prefix_mode="no_grad"))
    cached = fit(cached_clf, data, cfg)
    assert len(plain_sgd) == 2 and all(isinstance(o, torch.optim.SGD) for o in plain_sgd)
    assert len(live.steps) == len(cached.steps) == 2 * 5  # 36 examples / batch 8, log_every=1
    np.testing.assert_allclose([s["loss"] for s in cached.steps], [s["loss"] for s in live.steps], rtol=1e-5, atol=0)
    np.testing.assert_allclose([e["val_loss"] for e in cached.epochs], [e["val_loss"] for e in live.epochs], rtol=1e-5)
    trained = dict(cached_clf.model.named_parameters())
    moved = max(float((p.detach() - start[n]).abs().max()) for n, p in live_clf.model.named_parameters() if n in start)
    assert moved > 1e-3, f"training moved the weights by {moved:.2g} only: the comparison below would say little"
    for name, p in live_clf.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(trained[name], p, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
)
def test_bf16_cached_epochs_train_the_no_grad_steps(tiny_qwen3, data, tmp_path, device, plain_sgd):
    """Under bf16 base weights (``bfloat16`` on the CPU, ``auto`` on a GPU) the cached epochs, which run the
    fused bf16 path, train the steps no_grad trains (stock PEFT blocks), on the same batches: the losses
    per step within 3e-2 (about four bf16 steps at a loss of ~1; measured ≤ 8.4e-3 apart on the CPU, while
    the steps' losses span 0.56) and the validation losses too. Plain SGD, as in the fp32 test above."""
    cfg = config(tmp_path, epochs=2, bucket_by_length=False, lr=0.05)  # the live modes' batches, same order
    dtype = "bfloat16" if device == "cpu" else "auto"
    live_clf, cached_clf = (classifier(tiny_qwen3, 2, dtype=dtype, device=device) for _ in range(2))
    assert next(p for p in live_clf.model.parameters() if not p.requires_grad).dtype == torch.bfloat16
    live = fit(live_clf, data, dataclasses.replace(cfg, prefix_mode="no_grad"))
    cached = fit(cached_clf, data, cfg)
    assert len(live.steps) == len(cached.steps) == 2 * 5
    losses = np.array([[s["loss"] for s in run.steps] for run in (live, cached)])
    np.testing.assert_allclose(losses[1], losses[0], atol=3e-2, rtol=0)
    assert np.ptp(losses[0]) > 0.1, "the steps' losses differ from batch to batch: a shifted batch would show"
    val = [[e["val_loss"] for e in run.epochs] for run in (live, cached)]
    np.testing.assert_allclose(val[1], val[0], atol=3e-2, rtol=0)


class ScalarReads(TorchDispatchMode):
    """Counts the reads of a tensor's value into Python (``float``, ``item``, ``bool`` of a tensor …:
    ``aten::_local_scalar_dense``), each a wait for the device on CUDA."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reads += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def test_cached_steps_read_nothing_back_from_the_device(tiny_qwen3, data, tmp_path):
    """A cached training step reads no tensor value into Python: the losses wait on the device until the
    log interval, and whether a batch is padded is known on the host. So the reads of one epoch do not
    grow with its steps (3, 5, 9 steps, batches padded or not, logged once at the epoch's end). Reverting
    either (a float per step, or transformers' all-ones check of a padded mask) makes them grow."""
    clf = classifier(tiny_qwen3)
    cache = prepare_cache(clf, data, config(tmp_path))
    with ScalarReads() as probe:
        float(torch.ones(()) * 2)
    assert probe.reads == 1, "the counter sees a read"
    reads = []
    for batch_size in (12, 8, 4):
        cfg = config(tmp_path, batch_size=batch_size, log_every=1000)
        with ScalarReads() as probe:
            result = fit_cached(clf, {"train": data["train"]}, cfg, cache=cache)
        assert len(result.steps) == 1 and result.steps[0]["step"] == -(-36 // batch_size)
        reads.append(probe.reads)
    assert reads[0] == reads[1] == reads[2], f"reads per epoch of 3, 5, 9 steps: {reads}"


@pytest.mark.slow
def test_bucketed_training_learns_and_restores_the_model(tiny_qwen3, data, tmp_path):
    clf = classifier(tiny_qwen3)
    frozen = {n: p.detach().clone() for n, p in clf.model.named_parameters() if not p.requires_grad}
    result = fit_cached(clf, data, config(tmp_path, epochs=2))
    assert len(result.epochs) == 2 and all(np.isfinite(s["loss"]) for s in result.steps)
    for n, p in clf.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen {n} changed"
    assert predict(clf, data["test"], 16).logits.shape == (12, 3)  # the live path still works after


def test_bfloat16_cache_is_half_the_size_and_close(tiny_qwen3, data, tmp_path):
    clf = classifier(tiny_qwen3)
    full = prepare_cache(clf, data, config(tmp_path))
    half = prepare_cache(clf, data, config(tmp_path / "bf16", cache_dtype="bfloat16"))
    assert half.storage_dtype == torch.bfloat16 and half.fingerprint["dtype"] == "bfloat16"
    assert half.split("train", data["train"]).shards[0].dtype == torch.bfloat16
    assert half.bytes < 0.6 * full.bytes
    a = predict_cached(clf, full, "val", data["val"], 16).logits
    b = predict_cached(clf, half, "val", data["val"], 16).logits
    np.testing.assert_allclose(b, a, atol=0.05)


# ---------------------------------------------------------------------------------------------------
# Length bucketing
# ---------------------------------------------------------------------------------------------------


def test_bucketing_cuts_padding_and_keeps_every_example_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=1000)
    bucketed = bucketed_indices(lengths, 16, seed=3)
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(1000))
    assert [len(b) for b in sorted(bucketed, key=len, reverse=True)] == [16] * 62 + [8]
    random_pad = padding_fraction(lengths, batch_indices(1000, 16, True, 3))
    assert padding_fraction(lengths, bucketed) < 0.05 < random_pad
    again = bucketed_indices(lengths, 16, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(bucketed, again, strict=True))
    other = bucketed_indices(lengths, 16, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(bucketed, other, strict=True))


# ---------------------------------------------------------------------------------------------------
# The Kedro node builds; training reuses
# ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cache_node_builds_and_fit_reuses(tiny_qwen3, data, tmp_path, caplog):
    from toptune.pipelines.cache.nodes import build_prefix_cache

    params = {
        "model": {"name_or_path": str(tiny_qwen3), "trainable_layers": 2},
        "lora": {"r": 4, "alpha": 8},
        "training": {
            "prefix_mode": "cache",
            "epochs": 1,
            "batch_size": 8,
            "progress": False,
            "cache_dir": str(tmp_path / "cache"),
            "seed": 7,
        },
    }
    label_map = {str(k): v for k, v in ID2LABEL.items()}
    cfg = parse_params(params)  # the typed configs the hook hands the node
    model, lora, training = cfg.model, cfg.lora, cfg.training
    summary, metrics = build_prefix_cache(data, label_map, model, lora, training)
    assert summary["status"] == "built" and summary["bytes"] > 0 and metrics["bytes"]["value"] == summary["bytes"]
    lens = data["train"].lengths()
    assert metrics["padding_fraction_unbucketed"]["value"] == padding_fraction(
        lens, batch_indices(len(lens), 8, True, 7)
    )
    assert 0 <= metrics["padding_fraction_bucketed"]["value"] < metrics["padding_fraction_unbucketed"]["value"]
    manifest = Path(summary["path"]) / "manifest.json"
    built_at = json.loads(manifest.read_text())["built_at"]
    again, _ = build_prefix_cache(data, label_map, model, lora, training)
    assert again["status"] == "reused"
    clf = build_classifier(
        ModelConfig(**params["model"]), LoraSettings(**params["lora"]), ID2LABEL, seed=7, device="cpu"
    )
    with caplog.at_level("INFO", logger="toptune.cache"):
        fit(clf, data, TrainingConfig(**params["training"]))
    assert any("reused" in r.getMessage() for r in caplog.records)
    assert json.loads(manifest.read_text())["built_at"] == built_at
    skipped, _ = build_prefix_cache(data, label_map, model, lora, dataclasses.replace(training, prefix_mode="no_grad"))
    assert skipped["status"] == "skipped"


@pytest.mark.slow
def test_auto_is_decided_once_by_the_cache_node_and_followed_by_training(tiny_qwen3, data, tmp_path, monkeypatch):
    from toptune.pipelines.cache.nodes import build_prefix_cache
    from toptune.pipelines.train.nodes import train_model

    monkeypatch.chdir(tmp_path)  # the train node writes its checkpoints under the project root (here)
    model = ModelConfig(name_or_path=str(tiny_qwen3), trainable_layers=2)
    lora = LoraSettings(r=4, alpha=8)
    # resume never: each call trains (under auto, a run would continue the previous call's checkpoint, in its mode)
    training = TrainingConfig(
        prefix_mode="auto",
        epochs=2,
        batch_size=8,
        progress=False,
        cache_dir=str(tmp_path / "cache"),
        seed=7,
        resume="never",
    )
    label_map = {str(k): v for k, v in ID2LABEL.items()}
    summary, metrics = build_prefix_cache(data, label_map, model, lora, training)
    rates = summary["compute_tokens_per_second"], summary["read_tokens_per_second"]
    assert summary["prefix_mode"] == ("cache" if rates[1] > rates[0] else "no_grad")
    assert summary["prefix_mode_reason"] and f"{rates[0]:,.0f} tokens/s" in summary["prefix_mode_reason"]
    assert metrics["compute_tokens_per_second"]["value"] == rates[0] and metrics["used"]["value"] == (
        summary["prefix_mode"] == "cache"
    )
    assert bool(list((tmp_path / "cache").glob("*/manifest.json"))) == (summary["prefix_mode"] == "cache")
    # The train node follows the summary's decision (it does not measure again); each way is honoured.
    for decided in ("no_grad", "cache"):
        one_epoch = dataclasses.replace(training, epochs=1)
        *_, train_summary = train_model(
            data, label_map, DataConfig(), model, lora, one_epoch, {**summary, "prefix_mode": decided}
        )
        assert train_summary["prefix_mode"] == decided
    assert list((tmp_path / "cache").glob("*/manifest.json"))  # the cache mode built (or reused) it
