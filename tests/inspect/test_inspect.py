"""The inspector measures what the seed asserts: which modes keep the frozen prefix in the graph.

Real tiny Qwen3 / Qwen2 checkpoints (4 blocks, hidden 64), the real tokenizer, one batch; nothing
under test is mocked, and no wall-clock time is asserted.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from toptune.cache import prepare_cache
from toptune.config import (
    ConfigError,
    InspectConfig,
    LoraSettings,
    ModelConfig,
    TrainingConfig,
    parse_group,
)
from toptune.data.batches import rows_batch
from toptune.data.tokens import encode
from toptune.inspect import (
    MODES,
    BlockShape,
    block_diagram_figure,
    block_saved_bytes,
    cache_batch,
    estimate_top_k,
    format_seed_table,
    format_table,
    inspect_modes,
    metrics_of,
    saved_bytes_figure,
    seed_table,
)
from toptune.train.recipe import build_classifier

TEXTS = [
    "The battery is not great, but the screen is excellent.",
    "Short one.",
    "The lid is flimsy and the base is not solid, sadly.",
    "Works fine and the fan is quiet.",
]
ID2LABEL = {0: "a", 1: "b", 2: "c"}
LORA = LoraSettings(r=4, alpha=8)


def test_seed_table_facts():
    t = seed_table()
    a, b, c = t["A"]["nodes"], t["B"]["nodes"], t["C"]["nodes"]
    # A: both matmuls, the relu, and an AccumulateGrad for fc1.weight, fc2.weight and x.
    assert a.count("MmBackward0") == 2 and "ReluBackward0" in a and a.count("AccumulateGrad") == 3
    # B: fc1's weight is frozen, yet fc1's matmul (and the relu) stay in the graph, with their activations.
    assert b.count("MmBackward0") == 2 and "ReluBackward0" in b and t["B"]["fc1_in_graph"]
    assert b.count("AccumulateGrad") == 2  # fc2.weight and x; none for the frozen fc1.weight
    # C: no_grad + detach leave only fc2's nodes (its matmul, its weight's transpose, two leaves).
    assert c == ["MmBackward0", "AccumulateGrad", "TBackward0", "AccumulateGrad"] and not t["C"]["fc1_in_graph"]
    # Saved for backward: A keeps x (for fc1.weight's gradient) and relu's output; B and C only relu's
    # output (fc2's input). In this bias-free net B's cost is nodes and backward work through fc1 to
    # x, not bytes; in a real block (norms, attention, SiLU) it is bytes too (see the mode tests).
    assert t["A"]["saved_activation_bytes"] > t["B"]["saved_activation_bytes"] == t["C"]["saved_activation_bytes"] > 0
    # The adjacency list is the seed's: node → children, by BFS number.
    adj = t["C"]["adjacency"]
    assert adj["0"]["name"] == "MmBackward0" and sorted(adj["0"]["children"]) == [1, 2]
    assert adj["2"] == {"name": "TBackward0", "children": [3]}
    assert "fc1.weight.requires_grad=False" in format_seed_table(t)


def batch_of(tokenizer, texts=TEXTS, labels=(0, 1, 2, 0)):
    enc = encode(list(texts), tokenizer, 64, labels=list(labels))
    return rows_batch(enc, np.arange(len(enc)), tokenizer.pad_token_id)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(("qwen3", 1), id="qwen3-K1"),
        pytest.param(("qwen2", 2), id="qwen2-K2", marks=pytest.mark.slow),
    ],
)
def report(request, tiny_qwen3, tiny_qwen2, tokenizer):
    kind, k = request.param
    path = {"qwen3": tiny_qwen3, "qwen2": tiny_qwen2}[kind]
    return inspect_modes(
        ModelConfig(name_or_path=str(path), trainable_layers=k),
        LORA,
        ID2LABEL,
        batch_of(tokenizer),
        seed=0,
        device="cpu",
        tokenizer=tokenizer,
    )


def prefix_sum(report, mode, field="saved_bytes_by_block"):
    prefix = [f"layer.{i}" for i in range(min(report["model"]["trainable_layers"]))]
    return sum(report["modes"][mode][field].get(b, 0) for b in prefix + ["embed"])


def test_prefix_out_of_the_graph_exactly_where_it_should_be(report):
    m = report["modes"]
    assert list(m) == list(MODES) and not any("skipped" in v for v in m.values())
    for mode in ("topk_no_grad", "topk_cached"):
        assert prefix_sum(report, mode) == 0 and prefix_sum(report, mode, "autograd_nodes_by_block") == 0
        assert m[mode]["prefix_saved_bytes"] == 0
    # Input grads (as gradient checkpointing switches on) put the whole prefix back in the graph.
    assert prefix_sum(report, "topk_autograd_input_grads") > 0
    assert prefix_sum(report, "topk_autograd_input_grads", "autograd_nodes_by_block") > 0
    assert all(
        m["topk_autograd_input_grads"]["saved_bytes_by_block"][f"layer.{i}"] > 0
        for i in range(report["model"]["first_trainable_block"])
    )
    assert prefix_sum(report, "full") > 0 and prefix_sum(report, "lora_all") > 0
    k, layers = len(report["model"]["trainable_layers"]), report["model"]["num_layers"]
    assert m["topk_no_grad"]["saved_bytes_total"] <= m["lora_all"]["saved_bytes_total"] * k / layers * 1.1
    assert report["ratios"]["topk_no_grad_over_lora_all"] <= k / layers * 1.1
    assert m["topk_cached"]["saved_bytes_total"] < m["topk_no_grad"]["saved_bytes_total"]
    assert "computed once under no_grad" in m["topk_cached"]["fed_from"]
    assert m["topk_no_grad"]["trainable_params"] < m["lora_all"]["trainable_params"] < m["full"]["trainable_params"]
    assert m["full"]["frozen_params"] == 0 and m["topk_no_grad"]["cuda_peak_bytes"] is None
    for v in m.values():
        # Every saved tensor and node is charged to a block (the fused cached blocks included).
        assert "other" not in v["saved_bytes_by_block"] and v["saved_bytes_total"] == sum(
            v["saved_bytes_by_block"].values()
        )
        assert v["autograd_nodes"] == sum(v["autograd_nodes_by_block"].values()) > 0
        assert all(v["saved_bytes_by_block"][f"layer.{i}"] > 0 for i in report["model"]["trainable_layers"])


def test_estimate_within_20_percent_of_measurement(report):
    for mode in ("topk_no_grad", "topk_cached"):
        ratio = report["estimate"][mode]["measured_over_estimated"]
        assert 0.8 <= ratio <= 1.2, f"{mode}: measured/estimated = {ratio:.3f}"


@pytest.mark.slow
def test_estimate_on_an_unpadded_batch(tiny_qwen2, tokenizer):
    """No padding: no float mask, and sdpa keeps k / v at their own heads (grouped-query attention)."""
    ids = torch.randint(0, 5000, (3, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 2])}
    r = inspect_modes(
        ModelConfig(name_or_path=str(tiny_qwen2), trainable_layers=3),
        LORA,
        ID2LABEL,
        batch,
        device="cpu",
        modes=("topk_no_grad", "topk_cached"),
        tokenizer=tokenizer,
    )
    assert not r["batch"]["padded"] and r["modes"]["topk_no_grad"]["prefix_saved_bytes"] == 0
    for mode in ("topk_no_grad", "topk_cached"):
        assert 0.8 <= r["estimate"][mode]["measured_over_estimated"] <= 1.2


def test_estimate_scales_with_the_shapes():
    s = BlockShape(
        batch=8,
        length=512,
        hidden=2560,
        heads=32,
        kv_heads=8,
        head_dim=128,
        intermediate=9728,
        lora_r=8,
        qk_norm=True,
        dtype_bytes=2,
    )
    one = block_saved_bytes(s)
    assert block_saved_bytes(BlockShape(**{**s.__dict__, "batch": 16})) > 1.9 * one  # ~linear in B (mask: B·T²)
    assert estimate_top_k(s, 4, pooled_last_block=True) < estimate_top_k(s, 4, pooled_last_block=False) < 4 * one
    # the Qwen3-4B figure of docs/design/inspector.md
    assert 2 * 2**30 < estimate_top_k(s, 4, pooled_last_block=False) < 3 * 2**30


@pytest.mark.slow
def test_cached_mode_reads_the_real_prefix_cache(tiny_qwen3, tokenizer, tmp_path):
    enc = encode(TEXTS, tokenizer, 64, labels=[0, 1, 2, 0])
    data = {
        "train": enc,
        "val": enc.take(np.arange(2)),
        "test": enc.take(np.arange(2, len(enc))),
    }
    cfg = TrainingConfig(prefix_mode="cache", cache_dir=str(tmp_path / "cache"), max_length=64, progress=False)
    model_cfg = ModelConfig(name_or_path=str(tiny_qwen3), trainable_layers=2)
    batch = rows_batch(enc, np.arange(len(enc)), tokenizer.pad_token_id)

    def run(stored):
        return inspect_modes(
            model_cfg, LORA, ID2LABEL, batch, device="cpu", modes=("topk_cached",), stored=stored, tokenizer=tokenizer
        )["modes"]["topk_cached"]

    missing = run(cache_batch(data, cfg, "train", 4))
    assert "no cache at" in missing["fed_from"] and "computed once" in missing["fed_from"]
    prepare_cache(build_classifier(model_cfg, LORA, ID2LABEL, 0, "cpu", tokenizer), data, cfg)
    real = run(cache_batch(data, cfg, "train", 4))
    assert real["fed_from"].startswith("prefix cache at") and real["prefix_saved_bytes"] == 0
    # The store holds the same values the precomputed path feeds: the same graph, the same bytes.
    assert real["saved_bytes_by_block"] == missing["saved_bytes_by_block"]
    assert real["autograd_nodes"] == missing["autograd_nodes"]
    # another fingerprint has its own directory under cache_dir, none yet: the batch is computed once
    other = run(cache_batch(data, TrainingConfig(**{**cfg.__dict__, "max_length": 32}), "train", 4))
    assert "no cache at" in other["fed_from"] and "computed once" in other["fed_from"]


def test_report_outputs_and_config(report):
    table = format_table(report)
    assert "topk_no_grad / lora_all" in table and "measured/estimated" in table and "not measured" in table
    metrics = metrics_of(report)
    assert metrics["topk_no_grad.prefix_saved_bytes"] == 0 and metrics["lora_all.saved_bytes"] > 0
    assert "topk_cached.measured_over_estimated" in metrics
    for fig in (saved_bytes_figure(report), block_diagram_figure(report)):
        assert fig.axes
    skipped = copy.deepcopy(report)
    skipped["modes"]["full"] = {"skipped": "out of memory on cuda:0"}
    assert "skipped: out of memory" in format_table(skipped) and saved_bytes_figure(skipped).axes
    assert block_diagram_figure(skipped).axes and "full.saved_bytes" not in metrics_of(skipped)


def test_inspect_parameters_are_checked(tiny_qwen3, tokenizer):
    assert parse_group(InspectConfig, {"batch_size": 4, "modes": ["topk_no_grad"]}, "inspect").modes == ["topk_no_grad"]
    with pytest.raises(ConfigError, match="inspect.modes"):
        parse_group(InspectConfig, {"modes": ["bogus"]}, "inspect")
    with pytest.raises(ConfigError, match="inspect.batch_size"):
        parse_group(InspectConfig, {"batch_size": 0}, "inspect")
    with pytest.raises(ConfigError, match="unknown parameter inspect.bogus"):
        parse_group(InspectConfig, {"bogus": 1}, "inspect")
    with pytest.raises(ValueError, match="inspect.modes"):
        inspect_modes(
            ModelConfig(name_or_path=str(tiny_qwen3)),
            LORA,
            ID2LABEL,
            batch_of(tokenizer),
            modes=("bogus",),
            tokenizer=tokenizer,
        )
