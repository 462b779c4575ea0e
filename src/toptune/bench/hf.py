"""The Hugging Face baseline: ``Trainer`` + PEFT, set up as a Hugging Face user would, timed by
:class:`toptune.bench.timing.timed` like every other run."""

from __future__ import annotations

import math
import shutil
import tempfile
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from toptune.bench.config import BenchConfig, Setup
from toptune.bench.timing import result_row, timed
from toptune.data.tokens import Encoded
from toptune.model.lora import target_modules


def hf_model(setup: Setup, bc: BenchConfig):
    """The classifier as a Hugging Face user builds it: ``from_pretrained`` + ``get_peft_model`` with
    ``layers_to_transform`` on the top K blocks, seeded as toptune's ``build_classifier`` is (a test
    checks that the score head and LoRA weights start equal)."""
    set_seed(bc.training.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        setup.model_path,
        num_labels=len(setup.id2label),
        id2label=setup.id2label,
        label2id={v: k for k, v in setup.id2label.items()},
        pad_token_id=setup.tokenizer.pad_token_id,
        dtype=torch.bfloat16 if setup.model_cfg.dtype == "bfloat16" else torch.float32,
    )
    model.config.pad_token_id = setup.tokenizer.pad_token_id
    n = model.config.num_hidden_layers
    trainable_blocks = list(range(n - bc.trainable_layers, n))
    # The projections toptune adapts, named the way a user names them: leaf names + layers_to_transform.
    leaves = sorted({name.rpartition(".")[2] for name in target_modules(model, trainable_blocks, setup.lora)})
    lora = setup.lora
    return get_peft_model(
        model,
        LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=leaves,
            layers_to_transform=trainable_blocks,
            layers_pattern="layers",
            task_type="SEQ_CLS",
        ),
    ).to(setup.device)


def run_hf_trainer(setup: Setup, bc: BenchConfig, group_by_length: bool) -> dict:
    """``Trainer`` + PEFT as a user sets it up: ``DataCollatorWithPadding``, evaluation each epoch. Besides the
    figures of :func:`toptune.bench.timing.result_row`: ``setup_seconds`` (``from_pretrained``, PEFT, the
    datasets and the ``Trainer``: before ``train_seconds``' clock) and ``val_accuracy`` per epoch."""
    tc, data, dev = bc.training, setup.data, setup.device
    setup_clock = timed(dev, peak=False).__enter__()
    model = hf_model(setup, bc)

    def rows(enc: Encoded) -> list[dict]:  # a list is a map-style dataset
        return [
            {"input_ids": x, "attention_mask": [1] * len(x), "label": int(y)}
            for x, y in ((enc.row(i).tolist(), enc.labels[i]) for i in range(len(enc)))
        ]

    class CountingCollator(DataCollatorWithPadding):
        """``DataCollatorWithPadding``, counting padded positions for the report."""

        real = padded = 0

        def __call__(self, features):
            batch = super().__call__(features)
            CountingCollator.real += int(batch["attention_mask"].sum())
            CountingCollator.padded += batch["attention_mask"].numel()
            return batch

    class EpochTimer(TrainerCallback):
        """Training-pass seconds per epoch (``on_epoch_end`` comes before the epoch's evaluation)."""

        def __init__(self):
            self.seconds, self.t = [], None

        def on_epoch_begin(self, args, state, control, **kw):
            self.t = timed(dev, peak=False).__enter__()

        def on_epoch_end(self, args, state, control, **kw):
            self.t.__exit__(None, None, None)
            self.seconds.append(self.t.seconds)

    steps = math.ceil(len(data["train"]) / tc.batch_size) * tc.epochs
    sampling: dict[str, Any] = {"train_sampling_strategy": "group_by_length"} if group_by_length else {}
    cuda, timer, out = dev.type == "cuda", EpochTimer(), tempfile.mkdtemp(prefix="toptune-bench-hf-")
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=tc.batch_size,
        per_device_eval_batch_size=tc.eval_batch_size,
        num_train_epochs=tc.epochs,
        learning_rate=tc.lr,
        weight_decay=0.0,
        lr_scheduler_type="linear",
        warmup_steps=int(tc.warmup_ratio * steps),
        max_grad_norm=tc.max_grad_norm,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="epoch",
        report_to="none",
        seed=tc.seed,
        disable_tqdm=True,
        use_cpu=not cuda,
        bf16=cuda and setup.model_cfg.dtype != "float32",
        dataloader_pin_memory=cuda,
        **sampling,
    )
    accuracy = lambda p: {"accuracy": float((np.asarray(p.predictions).argmax(-1) == p.label_ids).mean())}  # noqa: E731
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows(data["train"]),
        eval_dataset=rows(data["val"]),
        data_collator=CountingCollator(setup.tokenizer),
        compute_metrics=accuracy,
        callbacks=[timer],
    )
    setup_clock.__exit__(None, None, None)
    CountingCollator.real = CountingCollator.padded = 0
    with timed(dev) as t:
        trainer.train()
    pad = 1 - CountingCollator.real / max(CountingCollator.padded, 1)
    # A list is a map-style dataset; Trainer.predict's annotation names only torch's Dataset class.
    pred = trainer.predict(rows(data["test"]))  # type: ignore[arg-type]
    shutil.rmtree(out, ignore_errors=True)
    return result_row(
        setup,
        bc,
        t,
        timer.seconds,
        float((np.asarray(pred.predictions).argmax(-1) == pred.label_ids).mean()),
        padding_fraction=pad,
        setup_seconds=setup_clock.seconds,
        val_accuracy=[float(e["eval_accuracy"]) for e in trainer.state.log_history if "eval_accuracy" in e],
    )
