"""``model.dtype``: bf16 base weights with fp32 LoRA, score head and optimiser state; fp32 untouched.

On the CPU, with the tiny Qwen3 and Qwen2 checkpoints. bf16 split vs bf16 stock forward: logits
within atol 1e-3 and gradients within 1e-3 + 1e-2 relative (measured: ≤ 2.4e-7 on logits, the two
paths run the same bf16 blocks and differ only in the order of the fp32 head's arithmetic; one bf16
step is 7.8e-3, so a path that diverged anywhere in the blocks would show).
"""

from __future__ import annotations

import pytest
import torch

from support.classifiers import batch, classifier
from toptune.config import TrainingConfig
from toptune.data.tokens import from_rows
from toptune.model.precision import resolve_dtype, weights_dtype
from toptune.prefix.forward import forward_logits
from toptune.train.loop import fused_adamw_ok, trainable_parameters
from toptune.train.recipe import fit


def bf16_classifier(path, k: int = 2):
    return classifier(path, k, seed=0, dtype="bfloat16")


def test_dtype_resolution():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("float32", torch.device("cuda")) == torch.float32
    if torch.cuda.is_available():
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        assert resolve_dtype("auto", torch.device("cuda")) == expected


@pytest.mark.slow
def test_trainable_parameters_are_fp32_under_bf16_weights(tiny_qwen3):
    clf = bf16_classifier(tiny_qwen3)
    assert weights_dtype(clf.model) == torch.bfloat16
    trained = {n: p for n, p in clf.model.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in clf.model.named_parameters() if not p.requires_grad}
    assert any("lora_A" in n for n in trained) and any("score" in n for n in trained)
    assert {p.dtype for p in trained.values()} == {torch.float32}, "LoRA and the trained score head stay fp32"
    assert {p.dtype for n, p in frozen.items() if "layers" in n} == {torch.bfloat16}
    # The optimiser as train() builds it: its state takes its parameters' dtype.
    params = trainable_parameters(clf.model)
    opt = torch.optim.AdamW(params, lr=1e-3, fused=fused_adamw_ok(params))
    b = batch(clf.tokenizer, "right")
    logits = forward_logits(clf.model, b["input_ids"], b["attention_mask"], clf.first_trainable_block, "no_grad")
    assert logits.dtype == torch.float32
    torch.nn.functional.cross_entropy(logits, b["labels"]).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
    opt.step()
    states = [s for p in params for s in opt.state[p].values() if torch.is_tensor(s) and s.numel() > 1]
    assert states and {s.dtype for s in states} == {torch.float32}


@pytest.mark.slow
def test_bf16_split_equals_bf16_stock_forward(tiny_checkpoint):
    for k in (1, 4):  # the deepest prefix, and none (K = L)
        clf = bf16_classifier(tiny_checkpoint, k)
        for side in ("right", "left"):
            b = batch(clf.tokenizer, side)
            out = {}
            for mode in ("no_grad", "autograd"):
                clf.model.zero_grad(set_to_none=True)
                logits = forward_logits(clf.model, b["input_ids"], b["attention_mask"], clf.first_trainable_block, mode)
                torch.nn.functional.cross_entropy(logits, b["labels"]).backward()
                out[mode] = (
                    logits.detach(),
                    {n: p.grad.clone() for n, p in clf.model.named_parameters() if p.requires_grad},
                )
            (split, split_grads), (stock, stock_grads) = out["no_grad"], out["autograd"]
            torch.testing.assert_close(split, stock, atol=1e-3, rtol=0, msg=f"K={k} {side}")
            for n, g in stock_grads.items():
                torch.testing.assert_close(split_grads[n], g, atol=1e-3, rtol=1e-2, msg=f"K={k} {side} {n}")
    # bf16 weights do compute something else than fp32 ones (the test is not comparing fp32 twice) …
    fp32 = classifier(tiny_checkpoint, 4)
    full = forward_logits(fp32.model, b["input_ids"], b["attention_mask"], fp32.first_trainable_block, "no_grad")
    assert 0 < (full - split).abs().max() < 0.25  # … and stays near them


def test_fp32_path_is_unchanged(tiny_qwen3):
    auto = classifier(tiny_qwen3)  # model.dtype: auto on the CPU
    assert {p.dtype for p in auto.model.parameters()} == {torch.float32}
    b = batch(auto.tokenizer, "right")
    split = forward_logits(auto.model, b["input_ids"], b["attention_mask"], auto.first_trainable_block, "no_grad")
    stock = forward_logits(auto.model, b["input_ids"], b["attention_mask"], auto.first_trainable_block, "autograd")
    torch.testing.assert_close(split, stock, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_bf16_weights_train_on_cpu(tiny_qwen3):
    clf = bf16_classifier(tiny_qwen3)
    enc_batch = batch(clf.tokenizer, "right")
    ids = [row[m.bool()].tolist() for row, m in zip(enc_batch["input_ids"], enc_batch["attention_mask"], strict=True)]
    enc = from_rows(ids, enc_batch["labels"].tolist())
    before = {n: p.detach().clone() for n, p in clf.model.named_parameters() if p.requires_grad}
    result = fit(
        clf,
        {"train": enc, "val": enc},
        TrainingConfig(prefix_mode="no_grad", epochs=2, batch_size=3, progress=False, log_every=1),
    )
    assert all(torch.isfinite(torch.tensor(s["loss"])) for s in result.steps)
    after = dict(clf.model.named_parameters())
    assert all(after[n].dtype == torch.float32 and not torch.equal(after[n], p) for n, p in before.items())
