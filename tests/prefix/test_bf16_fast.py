"""The cached epochs' fast path under bf16 base weights (CUDA's ``model.dtype: auto``; ``bfloat16`` on the
CPU, where bf16 matmuls exist): the fused LoRA projections over fp32 masters and the bf16 RMSNorm, held to
the stock bf16 top view (PEFT's modules, the Qwen RMSNorm module) on the tiny checkpoints.

The tolerance is stated against the truth, not against one rounding: the same model in fp32. Both bf16
paths round (the stock one runs LoRA in fp32 on the CPU, the fused one in bf16 as CUDA autocast does; the
fused RMSNorm multiplies ``dy · w`` in fp32), so they differ from each other by about as much as each
differs from fp32. The fused path must be no further from fp32 than the stock bf16 path, within
:data:`RATIO` (norm-wise relative error of the logits and of all trainable gradients together), and below
:data:`CEIL`. Measured on the tiny Qwen3 / Qwen2, K = 1, 2, 4, right and left padding: the stock path is
1.0-3.1 % from fp32 on logits and 1.8-13 % on gradients, the fused one 0.7-2.6 % and 1.9-9.6 %, at most
1.42× the stock path's error. A path that dropped or doubled a term (a LoRA product, a norm) is off by
tens of percent. The fp32 path is held to the stock view within 1e-5 in tests/prefix/test_forward_split.py.
"""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import Linear as LoraLinear

from support.classifiers import batch, classifier
from toptune.model.load import backbone
from toptune.prefix.forward import pool_index, run_prefix, run_top
from toptune.prefix.kernels import lora_linear, rms_norm

RATIO = 2.0
"""The fused bf16 path's error (against fp32) may be at most this many times the stock bf16 path's …"""
FLOOR = 2**-8
"""… plus half a bf16 step (relative), for where the stock path is exact."""
CEIL = 0.2
"""… and below this, whatever the stock path does."""


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative error of ``a`` against ``b``."""
    return float((a.double() - b.double()).norm() / b.double().norm())


def assert_no_further_than_stock(fast: torch.Tensor, stock: torch.Tensor, fp32: torch.Tensor, what: str) -> None:
    e_fast, e_stock = rel(fast, fp32), rel(stock, fp32)
    assert e_fast <= RATIO * e_stock + FLOOR and e_fast < CEIL, f"{what}: fused {e_fast:.4f}, stock {e_stock:.4f}"


def top_logits_and_grads(clf, b: dict, fast: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Logits, every trainable gradient and how many PEFT LoRA modules ran their own forward."""
    pooled = pool_index(b["input_ids"], clf.pad_token_id)
    hidden = run_prefix(clf.model, b["input_ids"], b["attention_mask"], clf.first_trainable_block)  # (B, T, D) bf16
    calls = []
    lora = [m for m in clf.model.modules() if isinstance(m, LoraLinear)]
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in lora]
    clf.model.zero_grad(set_to_none=True)
    try:
        logits = run_top(clf.model, hidden, b["attention_mask"], pooled, clf.first_trainable_block, fast=fast)
        torch.nn.functional.cross_entropy(logits.float(), b["labels"]).backward()
    finally:
        for h in hooks:
            h.remove()
    grads = {n: p.grad.clone() for n, p in clf.model.named_parameters() if p.requires_grad}
    return logits.detach().float(), grads, len(calls)


@pytest.mark.parametrize(
    ("side", "k"),
    [("right", 2), pytest.param("left", 2, marks=pytest.mark.slow), pytest.param("right", 4, marks=pytest.mark.slow)],
)
def test_bf16_fast_top_is_fused_and_as_close_to_fp32_as_stock(tiny_checkpoint, tokenizer, side, k):
    clf = classifier(tiny_checkpoint, k, dtype="bfloat16")
    assert backbone_dtype(clf) == torch.bfloat16
    b = batch(tokenizer, side)
    stock, stock_grads, stock_calls = top_logits_and_grads(clf, b, fast=False)
    fast, grads, fast_calls = top_logits_and_grads(clf, b, fast=True)
    assert stock_calls > 0 and fast_calls == 0, "a LoRA projection fell back to PEFT's module under bf16 weights"
    fp32, fp32_grads, _ = top_logits_and_grads(classifier(tiny_checkpoint, k), b, fast=False)
    assert grads.keys() == stock_grads.keys() == fp32_grads.keys()
    assert {g.dtype for g in grads.values()} == {torch.float32}, "the masters' gradients are fp32"
    assert_no_further_than_stock(fast, stock, fp32, "logits")
    flat = [torch.cat([g[n].flatten() for n in fp32_grads]) for g in (grads, stock_grads, fp32_grads)]
    assert_no_further_than_stock(*flat, "gradients")


def backbone_dtype(clf) -> torch.dtype:
    return next(p for n, p in clf.model.named_parameters() if "layers" in n and not p.requires_grad).dtype


def saved_by_top(clf, b: dict, fast: bool) -> list[torch.Tensor]:
    """The tensors autograd keeps for backward while the top blocks run (one entry per storage)."""
    pooled = pool_index(b["input_ids"], clf.pad_token_id)
    hidden = run_prefix(clf.model, b["input_ids"], b["attention_mask"], clf.first_trainable_block)
    kept: dict[int, torch.Tensor] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept.setdefault(t.untyped_storage().data_ptr(), t)
        return t

    params = {p.untyped_storage().data_ptr() for p in clf.model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run_top(clf.model, hidden, b["attention_mask"], pooled, clf.first_trainable_block, fast=fast)
    return [t for ptr, t in kept.items() if ptr not in params]


def test_bf16_fast_top_saves_bf16_inputs_once(tiny_qwen3, tokenizer):
    """The fused path keeps no fp32 copy of a (B, T, D) state (PEFT under bf16 weights keeps one per LoRA
    projection, the RMSNorm module two per norm), and saves less than the stock top view (measured: 0.34 of
    its bytes on the tiny Qwen3 and Qwen2, K = 2)."""
    clf = classifier(tiny_qwen3, 2, dtype="bfloat16")
    b = batch(tokenizer, "right")
    tokens, dim = b["input_ids"].numel(), clf.model.config.hidden_size

    def fp32_states(saved):
        return [t for t in saved if t.dtype == torch.float32 and t.numel() >= tokens * dim]

    stock, fast = saved_by_top(clf, b, fast=False), saved_by_top(clf, b, fast=True)
    assert fp32_states(stock), "the stock view does keep fp32 copies: the comparison says something"
    assert fp32_states(fast) == []
    nbytes = lambda saved: sum(t.untyped_storage().nbytes() for t in saved)  # noqa: E731
    assert nbytes(fast) < 0.6 * nbytes(stock), (nbytes(fast), nbytes(stock))


def test_bf16_rms_norm_equals_the_module_and_saves_input_and_rstd(tiny_qwen3):
    clf = classifier(tiny_qwen3, 2, dtype="bfloat16")
    norm = backbone(clf.model).layers[-1].input_layernorm
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 5, norm.weight.shape[0], generator=g) * 4).bfloat16().requires_grad_(True)
    dy = torch.randn(x.shape, generator=g).bfloat16()
    stock = norm(x)
    (stock_dx,) = torch.autograd.grad(stock, x, dy)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fused = rms_norm(norm, x)
    (dx,) = torch.autograd.grad(fused, x, dy)
    assert torch.equal(fused, stock), "the forward is the module's, op for op"
    assert fused.dtype == dx.dtype == torch.bfloat16
    x32 = x.detach().float().requires_grad_(True)
    w32 = norm.weight.detach().float()
    y32 = w32 * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))
    (dx32,) = torch.autograd.grad(y32, x32, dy.float())
    assert_no_further_than_stock(dx, stock_dx, dx32, "dx")
    kinds = sorted((str(t.dtype), tuple(t.shape)) for t in saved if t is not norm.weight)
    assert kinds == [("torch.bfloat16", tuple(x.shape)), ("torch.float32", (3, 5, 1))], "the bf16 input and rstd"


def test_bf16_lora_projection_casts_fp32_masters_and_returns_fp32_gradients(tiny_qwen3):
    clf = classifier(tiny_qwen3, 2, dtype="bfloat16")
    proj = backbone(clf.model).layers[-1].self_attn.q_proj
    base, a, bmat = proj.base_layer.weight, proj.lora_A["default"].weight, proj.lora_B["default"].weight
    assert base.dtype == torch.bfloat16 and a.dtype == bmat.dtype == torch.float32
    x = torch.randn(7, proj.in_features, generator=torch.Generator().manual_seed(0)).bfloat16().requires_grad_(True)
    scale = proj.scaling["default"]

    def fp32(t: torch.Tensor) -> torch.Tensor:  # the same projection in fp32, from the same (rounded) values
        t = t.float()
        return t @ base.float().t() + scale * (t @ a.t()) @ bmat.t()

    out = {}
    for name, run in (("peft", proj), ("fused", lambda t: lora_linear(proj, t)), ("fp32", fp32)):
        y = run(x)
        out[name] = y.detach(), torch.autograd.grad(y.float().square().sum(), (x, a, bmat))
    assert [t.dtype for t in out["fused"][1]] == [torch.bfloat16, torch.float32, torch.float32]
    assert_no_further_than_stock(out["fused"][0], out["peft"][0], out["fp32"][0], "y")
    for i, name in enumerate(("dx", "dA", "dB")):
        assert_no_further_than_stock(out["fused"][1][i], out["peft"][1][i], out["fp32"][1][i], name)
