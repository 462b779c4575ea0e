"""Run by tests/train/test_ddp.py, alone and under ``torchrun``: train a tiny classifier through the library
(``recipe.fit`` / ``recipe.predict``) in every live prefix mode, and as a multi-label and a regression model
(``tests/support/kinds.py``) under no_grad, and save what rank 0 ends with (``RUNS``).

    python tests/support/ddp_worker.py MODEL_DIR OUT_DIR
    torchrun --nproc-per-node 2 tests/support/ddp_worker.py MODEL_DIR OUT_DIR

57 training rows in global batches of 8: the last batch holds one row, so under two processes one of
them has an empty share of it (it still takes part in the all-reduce).

Trained with plain SGD in place of the library's AdamW: two processes' all-reduced gradients differ from
one process's in the last bits; SGD keeps that a last-bit difference of the weights, AdamW would turn it
into an lr-sized step wherever a gradient is near zero (tests/support/optim.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import set_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `support` when run as a script
from support.kinds import id2label, kind_task, relabelled
from toptune.config import DataConfig, LoraSettings, ModelConfig, TrainingConfig
from toptune.data.prepare import texts_table
from toptune.data.tokens import Encoded, encode
from toptune.model.tokenizer import load_tokenizer
from toptune.task import MULTI, REGRESSION, SINGLE
from toptune.train import distributed
from toptune.train.recipe import build_classifier, fit, predict

ROOT = Path(__file__).resolve().parents[2]
ID2LABEL = {0: "negative", 1: "neutral", 2: "positive"}
RUNS = (("no_grad", SINGLE), ("autograd", SINGLE), ("no_grad", MULTI), ("no_grad", REGRESSION))
"""(prefix mode, problem type) of each run; each saves ``<mode>.<problem type>.pt``."""
LR = 0.05
"""SGD's learning rate: the adapter moves by more than 1e-3 in the 16 steps, far above the tolerance."""
BUILT: list[str] = []


def plain_sgd(params, lr: float, weight_decay: float = 0.0, **_adamw_only) -> torch.optim.Optimizer:
    """Stands in for ``torch.optim.AdamW`` (same call) and records what it built."""
    BUILT.append("SGD")
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)


def splits(model_dir: str, n_train: int = 57) -> dict[str, Encoded]:
    """``n_train`` training rows, then 17 validation and 16 test rows of the bundled table."""
    table = texts_table(pd.read_csv(ROOT / "data" / "01_raw" / "reviews.csv").head(90), DataConfig())[0]
    label2id = {v: k for k, v in ID2LABEL.items()}
    enc = encode(
        table["text"].tolist(),
        load_tokenizer(model_dir),
        64,
        [label2id[x] for x in table["label"]],
        table["id"].tolist(),
    )

    def part(a: int, b: int) -> Encoded:
        return enc.take(np.arange(a, b))

    return {"train": part(0, n_train), "val": part(57, 74), "test": part(74, 90)}


def main(model_dir: str, out: str) -> None:
    single = splits(model_dir)
    torch.optim.AdamW = plain_sgd  # type: ignore[misc,assignment]  # see the module docstring
    for mode, kind in RUNS:
        set_seed(0)
        data = relabelled(single, kind)
        clf = build_classifier(
            ModelConfig(name_or_path=model_dir, trainable_layers=2),
            LoraSettings(r=4, alpha=8),
            id2label(kind),
            seed=0,
            device="cpu",
            problem_type=kind,
        )
        clf.task = kind_task(kind, data["train"])
        start = {n: p.detach().clone() for n, p in clf.model.named_parameters() if p.requires_grad}
        cfg = TrainingConfig(
            prefix_mode=mode, epochs=2, batch_size=8, eval_batch_size=8, lr=LR, log_every=1, progress=False
        )
        result = fit(clf, data, cfg)
        test = predict(clf, data["test"], 8)
        if distributed.is_main():
            torch.save(
                {
                    "losses": [s["loss"] for s in result.steps],
                    "epochs": result.epochs,
                    "best": result.best,
                    "test_logits": torch.from_numpy(test.logits),
                    "world": distributed.world(),
                    "optimizers": list(BUILT),
                    "moved": max(
                        float((p - start[n]).abs().max()) for n, p in clf.model.named_parameters() if n in start
                    ),
                    "adapter": {n: p.detach().clone() for n, p in clf.model.named_parameters() if p.requires_grad},
                },
                Path(out) / f"{mode}.{kind}.pt",
            )
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
