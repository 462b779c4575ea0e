"""The probe on the tiny Qwen3 and the tests' splits: one pooled vector per block at the head's token (the last
one what the head reads), a value per block for each label kind, deterministic, and the K rule on hand-made
curves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support.classifiers import ID2LABEL
from support.kinds import KINDS, id2label, relabel, relabelled
from toptune.config import ModelConfig, ProbeConfig, TrainingConfig
from toptune.data.batches import rows_batch
from toptune.errors import DataValidationError
from toptune.model.load import backbone, score_head
from toptune.prefix.forward import pool_index, run_prefix
from toptune.probe import METRIC, base_model, pooled_by_block, probe_blocks, probe_rows, recommend, run_probe
from toptune.task import MULTI, REGRESSION, SINGLE

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def base(tiny_qwen3):
    return base_model(ModelConfig(name_or_path=str(tiny_qwen3)), TrainingConfig(device="cpu"), ID2LABEL, SINGLE)


@pytest.fixture(scope="module")
def pooled(base, data):
    """(rows, blocks, hidden) of the train and val splits, every row, one batch each."""
    return {s: pooled_by_block(base, data[s], np.arange(len(data[s])), len(data[s]), CPU) for s in ("train", "val")}


def test_one_pooled_vector_per_block_whatever_the_batching(base, data, pooled, small_spec):
    enc, x = data["val"], pooled["val"]
    rows = np.arange(len(enc))
    assert x.shape == (len(enc), small_spec["num_layers"], small_spec["hidden_size"]) and x.dtype == np.float32
    assert np.isfinite(x).all()
    np.testing.assert_array_equal(x, pooled_by_block(base, enc, rows, len(enc), CPU))  # deterministic
    # Another batching and order pads differently; a row's vectors stay its own (causal: right padding unseen).
    np.testing.assert_allclose(pooled_by_block(base, enc, rows[::-1], 5, CPU)[::-1], x, atol=1e-5)


def test_each_block_entry_is_the_forward_split_state_and_the_last_is_what_the_head_reads(base, data, pooled, tokenizer):
    enc, x = data["val"], torch.from_numpy(pooled["val"])  # (N, L, D)
    b = rows_batch(enc, np.arange(len(enc)), tokenizer.pad_token_id)
    rows, at = torch.arange(len(enc)), pool_index(b["input_ids"], tokenizer.pad_token_id)
    with torch.no_grad():
        for i in range(x.shape[1]):  # block i's output = the state entering block i + 1
            entering = run_prefix(base, b["input_ids"], b["attention_mask"], i + 1)[rows, at]
            torch.testing.assert_close(x[:, i], entering, atol=1e-5, rtol=0)
        logits = base(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits  # the stock classifier
        head = score_head(base)(backbone(base).norm(x[:, -1]))  # the final norm, then the score head
    torch.testing.assert_close(head, logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_a_value_per_block_for_each_kind_and_the_same_twice(data, pooled, small_spec, kind):
    cfg = ProbeConfig(max_iter=50)
    train, val = ((pooled[s], relabel(data[s], kind).labels) for s in ("train", "val"))
    layers = probe_blocks(kind, cfg, train, val)
    assert [row["block"] for row in layers] == list(range(small_spec["num_layers"]))
    assert {row["metric"] for row in layers} == {METRIC[kind]}
    low = -1.0 if kind == REGRESSION else 0.0
    assert all(low <= row["value"] <= 1.0 and low <= row["train_value"] <= 1.0 for row in layers)
    assert probe_blocks(kind, cfg, train, val) == layers


def test_the_report_of_a_run(tiny_qwen3, data, small_spec):
    kind, splits = MULTI, relabelled(data, MULTI)
    args = (ModelConfig(name_or_path=str(tiny_qwen3)), TrainingConfig(device="cpu", progress=False))
    report = run_probe(*args, ProbeConfig(batch_size=16, max_rows=20, max_iter=50), splits, id2label(kind), kind)
    blocks, hidden = small_spec["num_layers"], small_spec["hidden_size"]
    assert len(report["layers"]) == report["num_blocks"] == blocks and report["metric"] == "macro_f1"
    assert report["rows"] == {"train": 20, "val": len(splits["val"])}
    assert report["pooled_bytes"] == (20 + len(splits["val"])) * blocks * hidden * 4
    k = report["recommended_trainable_layers"]
    assert (report["saturation_block"], k) == recommend([r["value"] for r in report["layers"]], 0.01)
    assert report["best_value"] == max(r["value"] for r in report["layers"])


def test_one_label_value_in_the_training_rows_fails_in_one_line(pooled):
    one = np.zeros(len(pooled["train"]), np.int32)
    with pytest.raises(DataValidationError, match="single label value.*raise probe.max_rows"):
        probe_blocks(SINGLE, ProbeConfig(), (pooled["train"], one), (pooled["val"], one[: len(pooled["val"])]))


@pytest.mark.parametrize(
    ("values", "tolerance", "expected"),
    [
        ([0.30, 0.50, 0.70, 0.795, 0.80, 0.79], 0.01, (3, 2)),  # caught up at block 3: blocks 4, 5 train
        ([0.30, 0.50, 0.70, 0.795, 0.80, 0.79], 0.0, (4, 1)),  # the best block itself
        ([0.20, 0.90, 0.60, 0.50], 0.01, (1, 2)),  # a peak mid-model: the prefix ends there
        ([0.50, 0.50, 0.50, 0.50], 0.01, (0, 3)),  # flat: block 0 already holds it; K stops below L
        ([0.10, 0.20, 0.30], 0.01, (2, 1)),  # still rising at the top: K = L - 1 - (L - 1) = 0, clamped to 1
        ([-0.2, 0.40, 0.35], 0.1, (1, 1)),  # spearman can be negative
    ],
)
def test_recommended_k_rule(values, tolerance, expected):
    assert recommend(values, tolerance) == expected


def test_rows_are_all_or_a_seeded_sorted_sample():
    np.testing.assert_array_equal(probe_rows(7, None, 0), np.arange(7))
    np.testing.assert_array_equal(probe_rows(7, 10, 0), np.arange(7))
    rows = probe_rows(100, 10, 3)
    assert len(set(rows)) == 10 and (np.diff(rows) > 0).all() and rows.max() < 100
    np.testing.assert_array_equal(rows, probe_rows(100, 10, 3))
