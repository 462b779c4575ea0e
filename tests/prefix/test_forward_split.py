"""The split forward (no_grad prefix view + top view) equals the stock PEFT forward, keeps the prefix out
of the graph, and its fast path for the cached epochs equals the stock blocks.

Run on a tiny Qwen3 and a tiny Qwen2 (4 blocks, Qwen2's top half sliding-window), with K=1, a middle split
(K=2) and K=L (no prefix). Every other family: tests/model/test_families.py.
"""

from __future__ import annotations

import pytest
import torch

from support.classifiers import TEXTS, batch, classifier
from toptune.config import TrainingConfig
from toptune.data.tokens import encode
from toptune.model.load import backbone, decoder_layers
from toptune.prefix.forward import forward_logits, pool_index, run_prefix, run_top
from toptune.train.recipe import fit

# K: top block only, middle split, every block (no prefix); `make test-fast` runs the middle split.
SPLITS = [pytest.param(1, marks=pytest.mark.slow), 2, pytest.param(4, marks=pytest.mark.slow)]


@pytest.mark.parametrize("k", SPLITS)
@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_equal_stock_forward(tiny_checkpoint, tokenizer, k, side):
    clf = classifier(tiny_checkpoint, k)
    clf.model.eval()
    b = batch(tokenizer, side)
    with torch.no_grad():
        stock = clf.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
    ours = forward_logits(clf.model, b["input_ids"], b["attention_mask"], clf.first_trainable_block, "no_grad")
    assert stock.shape == ours.shape == (len(TEXTS), 3)
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=0)


@pytest.mark.parametrize("k", SPLITS)
def test_gradients_equal_stock_backward(tiny_checkpoint, tokenizer, k):
    clf = classifier(tiny_checkpoint, k)
    b = batch(tokenizer, "right")
    grads = {}
    for mode in ("autograd", "no_grad"):
        clf.model.zero_grad(set_to_none=True)
        logits = forward_logits(clf.model, b["input_ids"], b["attention_mask"], clf.first_trainable_block, mode)
        torch.nn.functional.cross_entropy(logits, b["labels"]).backward()
        grads[mode] = {n: p.grad.clone() for n, p in clf.model.named_parameters() if p.requires_grad}
    assert grads["no_grad"].keys() == grads["autograd"].keys()
    assert any("score" in n for n in grads["no_grad"]) and any("lora_A" in n for n in grads["no_grad"])
    for name, g in grads["autograd"].items():
        torch.testing.assert_close(grads["no_grad"][name], g, atol=1e-5, rtol=1e-4, msg=name)


def saved_bytes_by_block(model, run) -> dict[int, int]:
    """Bytes that autograd saves for backward while each decoder block runs (``saved_tensors_hooks``)."""
    layers, current, saved = decoder_layers(model), [None], {}
    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, i)))
        handles.append(layer.register_forward_hook(lambda m, a, o: current.__setitem__(0, None)))

    def pack(t):
        if current[0] is not None:
            saved[current[0]] = saved.get(current[0], 0) + t.numel() * t.element_size()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()
    finally:
        for h in handles:
            h.remove()
    return saved


@pytest.mark.parametrize("k", SPLITS[:2])
def test_prefix_saves_nothing_even_with_input_grads(tiny_checkpoint, tokenizer, k):
    clf = classifier(tiny_checkpoint, k)
    clf.model.enable_input_require_grads()  # what gradient checkpointing switches on
    b = batch(tokenizer, "right")
    prefix = range(clf.first_trainable_block)

    def step(mode):
        return lambda: (
            forward_logits(clf.model, b["input_ids"], b["attention_mask"], clf.first_trainable_block, mode)
            .sum()
            .backward()
        )

    stock = saved_bytes_by_block(clf.model, step("autograd"))
    ours = saved_bytes_by_block(clf.model, step("no_grad"))
    assert all(stock.get(i, 0) > 0 for i in prefix), f"stock path shows no prefix bytes: {stock}"
    assert all(ours.get(i, 0) == 0 for i in prefix), f"no_grad prefix saved bytes: {ours}"
    top = range(clf.first_trainable_block, len(decoder_layers(clf.model)))
    assert all(ours.get(i, 0) > 0 for i in top), "trainable blocks must still save activations"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["no_grad", "autograd"])
def test_frozen_parameters_unchanged_by_training(tiny_qwen3, tokenizer, mode):
    clf = classifier(tiny_qwen3, 2)
    frozen = {n: p.detach().clone() for n, p in clf.model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in clf.model.named_parameters() if p.requires_grad}
    enc = encode(TEXTS * 4, tokenizer, 64, labels=[i % 3 for i in range(len(TEXTS) * 4)])
    data = {"train": enc, "val": enc}
    cfg = TrainingConfig(prefix_mode=mode, epochs=1, batch_size=8, lr=1e-2, progress=False)
    result = fit(clf, data, cfg)
    assert len(result.epochs) == 1 and result.steps
    for n, p in clf.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen {n} changed"
    assert any(not torch.equal(p, trainable[n]) for n, p in clf.model.named_parameters() if n in trainable)


def test_only_top_blocks_and_head_train(tiny_qwen3):
    clf = classifier(tiny_qwen3, 1)
    names = [n for n, p in clf.model.named_parameters() if p.requires_grad]
    assert names and all(("layers.3." in n and "lora_" in n) or "score" in n for n in names), names
    assert backbone(clf.model).config.pad_token_id == 151643


# ---------------------------------------------------------------------------------------------------
# The fast path of the cached epochs (split/fast.py): fused blocks, the last one at the pooled token
# ---------------------------------------------------------------------------------------------------


def assert_fast_top_equals_stock(clf, b: dict) -> None:
    """Logits and every trainable parameter's gradient of the fast top blocks equal the stock top view's."""
    pooled = pool_index(b["input_ids"], clf.pad_token_id)
    hidden = run_prefix(clf.model, b["input_ids"], b["attention_mask"], clf.first_trainable_block)
    out = {}
    for fast in (False, True):
        clf.model.zero_grad(set_to_none=True)
        logits = run_top(clf.model, hidden, b["attention_mask"], pooled, clf.first_trainable_block, fast=fast)
        torch.nn.functional.cross_entropy(logits, b["labels"]).backward()
        out[fast] = logits.detach(), {n: p.grad.clone() for n, p in clf.model.named_parameters() if p.requires_grad}
    (stock_logits, stock_grads), (logits, grads) = out[False], out[True]
    torch.testing.assert_close(logits, stock_logits, atol=1e-5, rtol=0)
    assert grads.keys() == stock_grads.keys()
    for n, g in stock_grads.items():
        torch.testing.assert_close(grads[n], g, atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.slow
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("k", SPLITS)
def test_fast_top_equals_stock_blocks(tiny_checkpoint, tokenizer, side, k):
    clf = classifier(tiny_checkpoint, k)
    assert_fast_top_equals_stock(clf, batch(tokenizer, side))


@pytest.mark.slow
def test_fast_top_trains_unfrozen_biases(tiny_qwen2, tokenizer):
    """A LoRA projection whose frozen-by-default bias a user unfreezes still gets the bias gradient."""
    clf = classifier(tiny_qwen2, 2)
    biases = [p for n, p in clf.model.named_parameters() if n.endswith("base_layer.bias")]
    assert biases, "Qwen2's q/k/v projections carry biases"
    for p in biases:
        p.requires_grad_(True)
    assert_fast_top_equals_stock(clf, batch(tokenizer, "right"))


def test_sliced_views_keep_the_whole_model_intact(tiny_qwen2):
    """Views share weights but not the block list, the layer types or the final norm with the model."""
    from toptune.prefix.views import block_view

    clf = classifier(tiny_qwen2, 2)
    inner = backbone(clf.model)
    types = list(inner.config.layer_types)
    assert "sliding_attention" in types and "full_attention" in types, "the tiny Qwen2 mixes full and sliding blocks"
    top = block_view(inner, 2, 4, final_norm=True)
    prefix = block_view(inner, 0, 2, final_norm=False)
    assert top.config.layer_types == types[2:] and prefix.config.layer_types == types[:2]
    assert len(inner.layers) == 4 and inner.config.layer_types == types and inner.config.num_hidden_layers == 4
    assert isinstance(inner.norm, type(top.norm)) and not isinstance(inner.norm, torch.nn.Identity)
    assert isinstance(prefix.norm, torch.nn.Identity)
    assert top.layers[0] is inner.layers[2] and prefix.embed_tokens is inner.embed_tokens
    assert block_view(inner, 2, 4, final_norm=True) is top  # cached per (start, stop, norm)
