"""The inspector measures what the seed asserts: which modes keep the frozen prefix in the graph."""

from __future__ import annotations

import pytest

from toptune.config import LoraSettings, ModelConfig
from toptune.data import collate, encode
from toptune.inspect import MODES, block_diagram_figure, format_table, inspect_modes, saved_bytes_figure, seed_table

TEXTS = ["The battery is not great, but the screen is excellent.", "Short one.",
         "The lid is flimsy and the base is not solid, sadly.", "Works fine and the fan is quiet."]


def test_seed_table_facts():
    t = seed_table()
    a, b, c = t["A"]["nodes"], t["B"]["nodes"], t["C"]["nodes"]
    # A: both matmuls, the relu, and an AccumulateGrad per weight.
    assert a.count("MmBackward0") == 2 and "ReluBackward0" in a and a.count("AccumulateGrad") == 3  # fc1, fc2, x
    # B: fc1's weight is frozen, yet fc1's matmul (and the relu) stay in the graph: activations kept.
    assert b.count("MmBackward0") == 2 and "ReluBackward0" in b and t["B"]["fc1_in_graph"]
    # C: no_grad + detach leave only fc2's nodes.
    assert c.count("MmBackward0") == 1 and "ReluBackward0" not in c and not t["C"]["fc1_in_graph"]
    assert set(c) == {"MmBackward0", "AccumulateGrad", "TBackward0"}
    assert t["C"]["adjacency"]["0"]["name"] == "MmBackward0" and t["C"]["adjacency"]["0"]["children"]


@pytest.fixture(scope="module", params=[("qwen3", 1), ("qwen2", 2)], ids=["qwen3-K1", "qwen2-K2"])
def report(request, tiny_qwen3, tiny_qwen2, tokenizer):
    kind, k = request.param
    path = {"qwen3": tiny_qwen3, "qwen2": tiny_qwen2}[kind]
    enc = encode(TEXTS, tokenizer, 64, labels=[0, 1, 2, 0])
    batch = collate(enc.input_ids, enc.labels, tokenizer.pad_token_id)
    return inspect_modes(ModelConfig(name_or_path=str(path), trainable_layers=k), LoraSettings(r=4, alpha=8),
                         {0: "a", 1: "b", 2: "c"}, batch, seed=0, device="cpu")


def prefix_sum(report, mode, field="saved_bytes_by_block"):
    prefix = [f"layer.{i}" for i in range(min(report["model"]["trainable_layers"]))]
    return sum(report["modes"][mode][field].get(b, 0) for b in prefix + ["embed"])


def test_prefix_out_of_the_graph_exactly_where_it_should_be(report):
    assert set(report["modes"]) == set(MODES) and not any("skipped" in m for m in report["modes"].values())
    for mode in ("topk_no_grad", "topk_cached"):
        assert prefix_sum(report, mode) == 0 and prefix_sum(report, mode, "autograd_nodes_by_block") == 0
    assert prefix_sum(report, "topk_autograd_input_grads") > 0
    assert prefix_sum(report, "topk_autograd_input_grads", "autograd_nodes_by_block") > 0
    assert prefix_sum(report, "full") > 0 and prefix_sum(report, "lora_all") > 0
    m = report["modes"]
    k, layers = len(report["model"]["trainable_layers"]), report["model"]["num_layers"]
    assert m["topk_no_grad"]["saved_bytes_total"] <= m["lora_all"]["saved_bytes_total"] * k / layers * 1.1
    assert m["topk_cached"]["saved_bytes_total"] <= m["topk_no_grad"]["saved_bytes_total"]
    assert m["topk_no_grad"]["trainable_params"] < m["lora_all"]["trainable_params"] < m["full"]["trainable_params"]
    assert m["full"]["frozen_params"] == 0 and m["topk_no_grad"]["cuda_peak_bytes"] is None


def test_estimate_within_20_percent_of_measurement(report):
    for mode in ("topk_no_grad", "topk_cached"):
        ratio = report["estimate"][mode]["measured_over_estimated"]
        assert 0.8 <= ratio <= 1.2, f"{mode}: measured/estimated = {ratio:.3f}"


def test_skipped_cache_mode_and_outputs(report, tiny_qwen3, tokenizer):
    enc = encode(TEXTS[:2], tokenizer, 64, labels=[0, 1])
    batch = collate(enc.input_ids, enc.labels, tokenizer.pad_token_id)
    r = inspect_modes(ModelConfig(name_or_path=str(tiny_qwen3), trainable_layers=1), LoraSettings(r=4, alpha=8),
                      {0: "a", 1: "b"}, batch, device="cpu", modes=("topk_no_grad", "topk_cached"), cache_available=False)
    assert "skipped" in r["modes"]["topk_cached"] and "saved_bytes_total" in r["modes"]["topk_no_grad"]
    assert "skipped" in format_table(r)
    for fig in (saved_bytes_figure(report), block_diagram_figure(report)):
        assert fig.axes
    with pytest.raises(ValueError, match="inspect.modes"):
        inspect_modes(ModelConfig(name_or_path=str(tiny_qwen3)), LoraSettings(), {0: "a"}, batch, modes=("bogus",))
