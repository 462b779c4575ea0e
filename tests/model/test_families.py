"""Every open Qwen text family: the forward split equals the stock forward, LoRA sits on the top blocks only (also
after save and load), the cache path equals the live one, the prefix saves nothing, merging keeps logits.

Each family's tiny checkpoint is written in its hub layout (Qwen3.5: the vision + language model) and
loaded back through ``load_classifier``, as a real one is. The vocabulary is cut to 1,000 rows (random
token ids; no tokenizer is involved in these equivalences) to keep the suite fast.
"""

from __future__ import annotations

import json

import pytest
import torch

from toptune.config import ConfigError, LoraSettings
from toptune.model.load import backbone, load_classifier
from toptune.model.lora import (
    add_adapters,
    load_adapter,
    lora_config,
    merge,
    trainable_blocks,
)
from toptune.model.tiny import FAMILIES, TinyQwenSpec, build_random
from toptune.prefix.forward import (
    forward_logits,
    pool_index,
    run_prefix,
    run_top,
    stock_logits,
)
from toptune.prefix.selfcheck import ForwardSplitMismatch, check_forward_split

PAD = 3
ID2LABEL = {0: "a", 1: "b", 2: "c"}
TOP = [2, 3]  # K = 2 of 4 blocks: a two-block prefix (for hybrids: linear, linear | linear, full)
MOE = ("qwen2_moe", "qwen3_moe", "qwen3_next", "qwen3_5_moe")


# `make test-fast`: one MoE and one hybrid (composite) family; Qwen2 and Qwen3 are in tests/prefix/ too.
FAST = ("qwen3_moe", "qwen3_5")


@pytest.fixture(scope="module", params=[f if f in FAST else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES])
def checkpoint(request, tmp_path_factory):
    """(model type, directory) of a tiny checkpoint of one family, as its hub repo ships it."""
    spec = TinyQwenSpec(
        model_type=request.param,
        num_layers=4,
        hidden_size=64,
        intermediate_size=128,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        vocab_size=1000,
    )
    out = tmp_path_factory.mktemp(request.param)
    build_random(spec).save_pretrained(out)
    return request.param, out


def classifier(path, experts: bool = False):
    """LoRA on blocks ``TOP`` with non-zero adapter weights (B starts at zero: a no-op otherwise)."""
    model = add_adapters(load_classifier(path, ID2LABEL, PAD, seed=1), LoraSettings(r=4, alpha=8, experts=experts), TOP)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def batch(side: str = "right") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels): 4 examples of 10 tokens, two of them padded."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (4, 10), generator=g)
    mask = torch.ones_like(ids)
    for row, n in ((0, 6), (2, 3)):
        cut = slice(n, None) if side == "right" else slice(None, 10 - n)
        ids[row, cut], mask[row, cut] = PAD, 0
    return ids, mask, torch.tensor([0, 1, 2, 1])


def logits_and_grads(model, mode: str, side: str):
    ids, mask, labels = batch(side)
    model.zero_grad(set_to_none=True)
    logits = forward_logits(model, ids, mask, min(TOP), mode)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("side", ["right", pytest.param("left", marks=pytest.mark.slow)])  # left: tests/prefix too
def test_forward_split_equals_stock_logits_and_gradients(checkpoint, side):
    model_type, path = checkpoint
    model = classifier(path, experts=model_type in MOE).train()
    stock, stock_grads = logits_and_grads(model, "autograd", side)
    split, split_grads = logits_and_grads(model, "no_grad", side)
    assert float((split - stock).abs().max()) <= 1e-6
    assert split_grads.keys() == stock_grads.keys() and any("lora_" in n for n in split_grads)
    for name, g in stock_grads.items():
        assert float((split_grads[name] - g).abs().max()) <= 1e-6, name


def test_lora_on_top_blocks_only_after_save_and_load(checkpoint, tmp_path):
    model_type, path = checkpoint
    model = classifier(path, experts=model_type in MOE).eval()
    assert trainable_blocks(model) == set(TOP)
    names = json.dumps(model.peft_config["default"].target_modules, default=sorted)
    if model_type in ("qwen3_next", "qwen3_5_moe", "qwen2_moe"):
        assert "shared_expert.gate_proj" in names  # the shared expert is an MLP: it gets LoRA under auto
    if model_type in ("qwen3_next", "qwen3_5", "qwen3_5_moe"):
        assert "linear_attn.out_proj" in names  # Gated DeltaNet projections too
    ids, mask, _ = batch()
    with torch.no_grad():
        before = stock_logits(model, ids, mask)
    model.save_pretrained(tmp_path)
    loaded = load_adapter(load_classifier(path, ID2LABEL, PAD, seed=99), str(tmp_path)).eval()
    assert trainable_blocks(loaded) == set(TOP)
    with torch.no_grad():
        torch.testing.assert_close(stock_logits(loaded, ids, mask), before, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_type", ["qwen3_moe", "qwen3_next"])
def test_peft_rewrite_would_move_lora_into_the_prefix(tmp_path, model_type):
    """Why ``adapters.v5_native`` exists: PEFT's own transformers-4 → 5 rewrite, left on, turns the top blocks'
    MLP targets into the routed experts of every block, prefix included."""
    from peft import get_peft_model

    spec = TinyQwenSpec(model_type=model_type, num_layers=4, hidden_size=64, intermediate_size=128, vocab_size=1000)
    build_random(spec).save_pretrained(tmp_path)
    base = load_classifier(tmp_path, ID2LABEL, PAD)
    stock_peft = get_peft_model(base, lora_config(base, LoraSettings(), TOP))
    assert trainable_blocks(stock_peft) - set(TOP), "PEFT no longer rewrites MoE targets: v5_native may be dropped"


def test_cached_path_equals_live_path(checkpoint):
    """What the cache stores (the prefix's output in eval mode) fed to the top blocks, as the cached epochs
    run them, gives the live no_grad logits."""
    model_type, path = checkpoint
    model = classifier(path).eval()
    ids, mask, _ = batch()
    with torch.no_grad():
        live = forward_logits(model, ids, mask, min(TOP), "no_grad")
        hidden = run_prefix(model, ids, mask, min(TOP))
        cached = run_top(model, hidden, mask, pool_index(ids, PAD), min(TOP), fast=True)
    torch.testing.assert_close(cached, live, atol=1e-5, rtol=0)


def test_prefix_saves_nothing_for_backward(checkpoint):
    model_type, path = checkpoint
    model = classifier(path).train()
    model.enable_input_require_grads()  # what gradient checkpointing switches on: the stock path keeps the prefix
    ids, mask, labels = batch()
    inner = backbone(model)
    current, saved = [None], {}
    hooks = [
        layer.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, i))
        for i, layer in enumerate(inner.layers)
    ]

    def pack(t):
        saved[current[0]] = saved.get(current[0], 0) + t.numel() * t.element_size()
        return t

    try:
        for mode in ("autograd", "no_grad"):
            saved.clear()
            current[0] = None
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = torch.nn.functional.cross_entropy(forward_logits(model, ids, mask, min(TOP), mode), labels)
            loss.backward()
            prefix = sum(saved.get(i, 0) for i in range(min(TOP)))
            if mode == "autograd":
                assert prefix > 0, (
                    "the stock path with input grads must show prefix bytes (else this test sees nothing)"
                )
            else:
                assert prefix == 0 and all(saved.get(i, 0) > 0 for i in TOP)
    finally:
        for h in hooks:
            h.remove()


def test_merged_model_keeps_logits(checkpoint):
    model_type, path = checkpoint
    model = classifier(path).eval()
    ids, mask, _ = batch()
    with torch.no_grad():
        before = stock_logits(model, ids, mask)
        merged = merge(model).eval()
        assert not any("lora_" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(stock_logits(merged, ids, mask), before, atol=1e-5, rtol=0)


def test_forward_split_check_passes_and_catches_a_wrong_split(checkpoint):
    model_type, path = checkpoint
    model = classifier(path)
    ids, mask, _ = batch()
    check = check_forward_split(model, ids, mask, min(TOP))
    assert check.max_abs_logit_diff <= 1e-6 and check.rows == 4 and check.model_type.startswith(model_type)
    # A prefix view that also applied the final norm would be a wrong forward split: the check must say so.
    from toptune.prefix import views

    inner = backbone(model)
    inner.__dict__[views._VIEWS][(0, min(TOP), False)] = views.block_view(inner, 0, min(TOP), final_norm=True)
    with pytest.raises(ForwardSplitMismatch, match=model_type):
        check_forward_split(model, ids, mask, min(TOP))


def test_unknown_lora_target_is_a_config_error_naming_it(tmp_path):
    spec = TinyQwenSpec(model_type="qwen3_5", num_layers=4, hidden_size=64, intermediate_size=128, vocab_size=1000)
    build_random(spec).save_pretrained(tmp_path)
    base = load_classifier(tmp_path, ID2LABEL, PAD)
    with pytest.raises(ConfigError, match=r"lora.target_modules: no linear module named 'qproj'"):
        add_adapters(base, LoraSettings(target_modules=["q_proj", "qproj"]), TOP)
    with pytest.raises(ConfigError, match=r"lora.experts=true"):
        add_adapters(base, LoraSettings(experts=True), TOP)  # a dense family has no routed experts
