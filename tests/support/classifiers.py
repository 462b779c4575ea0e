"""The tiny classifier with random (non-zero) adapter weights and a batch of mixed-length texts: the
forward split's, the cache's and the precision tests' subject."""

from __future__ import annotations

import numpy as np
import torch

from toptune.config import LoraSettings, ModelConfig
from toptune.data.batches import rows_batch
from toptune.data.tokens import encode
from toptune.task import SINGLE
from toptune.train.recipe import build_classifier

TEXTS = [
    "The battery is not great, but the screen is excellent.",
    "Short one.",
    "The lid is flimsy and the base is not solid, sadly.",
    "한국어 리뷰: 배터리가 좋지 않아요.",
    "Works.",
    "The motor is quiet and the jar is sturdy and the blade is fast and sharp.",
]
ID2LABEL = {0: "negative", 1: "neutral", 2: "positive"}


def classifier(
    path,
    k: int = 2,
    seed: int = 0,
    problem_type: str = SINGLE,
    id2label: dict | None = None,
    dtype: str = "auto",
    device: str = "cpu",
):
    """A ``problem_type`` classifier on ``path`` with LoRA on the top ``k`` blocks and non-zero adapter weights
    (``dtype``: ``model.dtype``; the LoRA weights and the head stay fp32 whatever it is), on ``device``."""
    clf = build_classifier(
        ModelConfig(name_or_path=str(path), trainable_layers=k, dtype=dtype),
        LoraSettings(r=4, alpha=8),
        id2label or ID2LABEL,
        seed=seed,
        device=device,
        problem_type=problem_type,
    )
    # LoRA's B starts at zero (a no-op); give every adapter weight a value so a wrong path shows.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in clf.model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return clf


def batch(tokenizer, side: str) -> dict[str, torch.Tensor]:
    """The (N=6, T) batch of ``TEXTS``, padded on the right or (rolled) on the left."""
    enc = encode(TEXTS, tokenizer, max_length=64, labels=[i % 3 for i in range(len(TEXTS))])
    b = rows_batch(enc, np.arange(len(enc)), tokenizer.pad_token_id)
    if side == "left":
        # Move each row's padding to the front (the stock classifier pools at the rightmost non-pad token).
        for row in range(len(TEXTS)):
            n = int(b["attention_mask"][row].sum())
            b["input_ids"][row] = torch.roll(b["input_ids"][row], b["input_ids"].shape[1] - n)
            b["attention_mask"][row] = torch.roll(b["attention_mask"][row], b["input_ids"].shape[1] - n)
    return b
