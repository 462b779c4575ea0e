"""The modes ``kedro run --pipeline inspect`` measures: one fresh classifier per mode, one training step each."""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from toptune.cache import CacheInvalid, cache_path, cached_logits, fingerprint, load_cache
from toptune.config import INSPECT_MODES, LoraSettings, ModelConfig
from toptune.inspect.estimate import estimate_report, shape_of
from toptune.inspect.measure import measure_step, prefix_keys
from toptune.model.load import backbone, load_classifier, text_config
from toptune.model.lora import param_counts
from toptune.model.tokenizer import load_tokenizer
from toptune.prefix.forward import forward_logits, pool_index, run_prefix
from toptune.task import Task
from toptune.train.device import autocast, resolve_device
from toptune.train.objective import Objective, labels_kind
from toptune.train.recipe import build_classifier, resolve_base_checkpoint

MODES = INSPECT_MODES  # the names inspect.modes may hold (toptune.config), each explained here
MODE_HELP = {
    "full": "every parameter trainable, stock forward",
    "lora_all": "LoRA on every block, stock forward",
    "topk_autograd": "LoRA on the top K blocks, stock forward",
    "topk_autograd_input_grads": "LoRA on the top K, stock forward, enable_input_require_grads() "
    "(as gradient checkpointing sets)",
    "topk_no_grad": "LoRA on the top K, prefix under no_grad + detach (toptune's default)",
    "topk_cached": "LoRA on the top K, fed from stored prefix output "
    "(toptune's cache mode: fused blocks, last block at the pooled token)",
}
METHOD = {
    "saved_bytes": "saved_tensors_hooks pack: untyped_storage().nbytes() of each saved tensor, each storage once",
    "parameters_counted": False,
    "parameters_note": "storages of parameters (weights saved for backward) are not counted: they stay in memory "
    "whatever autograd does; only activations count (on CUDA under bf16 autocast also the bf16 "
    "weight copies that backward keeps)",
    "block_attribution": "forward pre-hooks on the blocks' modules, and torch functions called with a block's "
    "parameter, set the running block; a saved tensor / a new grad_fn is charged to it",
    "autograd_nodes": "grad_fn nodes reachable from the loss (AccumulateGrad included), each charged to the block "
    "whose op created it (AccumulateGrad: its parameter's block)",
    "prefix": "blocks layer.0 … layer.<first-1>, below the lowest trainable block",
}


StoredBatch = Callable[[object], "tuple[dict[str, Tensor] | None, str]"]
"""Given the top-K classifier: the measured batch as the cache stores it (``hidden`` (B, T, D),
``attention_mask``, ``pooled``, ``labels``), or None when there is no usable store; and a note
(where it came from, or why there is none)."""


@dataclass
class _Setup:
    model: nn.Module
    trainable_blocks: list[int]
    forward: str
    """``autograd`` / ``no_grad`` / ``cache``."""
    clf: object | None = None


def _mode_setup(
    mode: str, model_cfg: ModelConfig, lora: LoraSettings, id2label: dict[int, str], seed: int, device: str, tokenizer
) -> _Setup:
    """A fresh classifier set up as ``mode`` asks."""
    if mode == "full":
        dtype = torch.bfloat16 if model_cfg.dtype == "bfloat16" else torch.float32
        model = load_classifier(
            resolve_base_checkpoint(model_cfg.name_or_path), id2label, tokenizer.pad_token_id, seed=seed, dtype=dtype
        )
        # transformers wraps PreTrainedModel.to with functools.wraps(nn.Module.to): mypy reads it unbound
        model = model.to(resolve_device(device))  # type: ignore[arg-type]
        model.requires_grad_(True)
        return _Setup(model, list(range(model.config.num_hidden_layers)), "autograd")
    if mode == "lora_all":
        n = text_config(resolve_base_checkpoint(model_cfg.name_or_path)).num_hidden_layers
        clf = build_classifier(
            dataclasses.replace(model_cfg, trainable_layers=list(range(n))), lora, id2label, seed, device, tokenizer
        )
        return _Setup(clf.model, clf.trainable_blocks, "autograd", clf)
    clf = build_classifier(model_cfg, lora, id2label, seed, device, tokenizer)
    if mode == "topk_autograd_input_grads":
        clf.model.enable_input_require_grads()
    forward = {
        "topk_autograd": "autograd",
        "topk_autograd_input_grads": "autograd",
        "topk_no_grad": "no_grad",
        "topk_cached": "cache",
    }[mode]
    return _Setup(clf.model, clf.trainable_blocks, forward, clf)


def precomputed_prefix(model: nn.Module, batch: dict[str, Tensor], first_trainable_block: int) -> dict[str, Tensor]:
    """What the cache stores for ``batch``: the prefix's output, computed once in eval mode without a
    graph, with the pooling positions — a plain tensor, as a cached epoch reads it."""
    was_training = model.training
    model.eval()
    hidden = run_prefix(model, batch["input_ids"], batch["attention_mask"], first_trainable_block)  # (B, T, D)
    model.train(was_training)
    return {
        "hidden": hidden,
        "attention_mask": batch["attention_mask"],
        "labels": batch["labels"],
        "pooled": pool_index(batch["input_ids"], backbone(model).config.pad_token_id),
    }


def _step_fn(setup: _Setup, batch: dict[str, Tensor], device: torch.device) -> Callable[[], Tensor]:
    """The training step's forward (as ``toptune.train.loop.train`` runs it): logits under the device's
    autocast, the labels' loss (cross-entropy, BCE or MSE) in fp32."""
    first_trainable_block = min(setup.trainable_blocks)

    def forward(b: dict[str, Tensor]) -> Tensor:
        return forward_logits(setup.model, b["input_ids"], b["attention_mask"], first_trainable_block, setup.forward)

    logits_fn = cached_logits(setup.model, first_trainable_block) if setup.forward == "cache" else forward
    labels = batch["labels"]
    objective = Objective(Task(labels_kind(labels.cpu().numpy())))  # the loss of the labels' kind

    def step() -> Tensor:
        with autocast(device):
            logits = logits_fn(batch)  # (B, C)
        return objective.loss_sum(logits, labels) / len(labels)

    return step


def inspect_modes(
    model_cfg: ModelConfig,
    lora: LoraSettings,
    id2label: dict[int, str],
    batch: dict[str, Tensor],
    seed: int = 0,
    device: str = "auto",
    modes: tuple[str, ...] | list[str] | None = None,
    stored: StoredBatch | None = None,
    repeats: int = 1,
    tokenizer=None,
) -> dict:
    """Measure every mode on ``batch`` (``input_ids``, ``attention_mask``, ``labels``); the report dict.

    ``topk_cached`` is fed by ``stored`` (the real prefix cache) when it returns a batch, else by
    :func:`precomputed_prefix` — the same values; the report says which in ``fed_from``.
    """
    unknown = sorted(set(modes or ()) - set(MODES))
    if unknown:
        raise ValueError(f"inspect.modes: unknown mode {unknown[0]!r}; known: {', '.join(MODES)}")
    tokenizer = tokenizer or load_tokenizer(resolve_base_checkpoint(model_cfg.name_or_path))
    report: dict = {"model": {}, "batch": {}, "method": METHOD, "modes": {}}
    for mode in [m for m in MODES if m in (modes or MODES)]:
        try:
            report["modes"][mode] = _measure_mode(
                mode, model_cfg, lora, id2label, batch, seed, device, stored, repeats, tokenizer, report
            )
        except torch.OutOfMemoryError as e:  # e.g. `full` on a big model: say so, measure the others
            report["modes"][mode] = {"skipped": f"out of memory: {str(e).splitlines()[0]}"}
        gc.collect()  # the next mode's CUDA numbers must not see this one's model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    prefix = prefix_keys(report) if report["model"] else []
    for m in report["modes"].values():
        if "saved_bytes_by_block" in m:
            m["prefix_saved_bytes"] = sum(m["saved_bytes_by_block"].get(k, 0) for k in prefix)
    report["batch"] = {
        "batch_size": int(batch["input_ids"].shape[0]),
        "length": int(batch["input_ids"].shape[1]),
        "real_tokens": int(batch["attention_mask"].sum()),
        "padded": bool((batch["attention_mask"] == 0).any()),
    }
    if report["model"]:
        report["estimate"] = estimate_report(report, report["model"].pop("_shape"))
        report["ratios"] = ratios(report)
    return report


def _measure_mode(
    mode: str,
    model_cfg: ModelConfig,
    lora: LoraSettings,
    id2label: dict[int, str],
    batch: dict[str, Tensor],
    seed: int,
    device: str,
    stored: StoredBatch | None,
    repeats: int,
    tokenizer,
    report: dict,
) -> dict:
    """One mode's entry of the report (and, for the first mode measured, ``report["model"]``)."""
    setup = _mode_setup(mode, model_cfg, lora, id2label, seed, device, tokenizer)
    dev = next(setup.model.parameters()).device
    b = {k: v.to(dev) for k, v in batch.items()}
    num_layers = len(backbone(setup.model).layers)
    extra = {}
    if setup.forward == "cache":
        got, note = stored(setup.clf) if stored is not None else (None, "no prefix cache given")
        if got is None:
            b = precomputed_prefix(setup.model, b, min(setup.trainable_blocks))
            note = f"prefix output computed once under no_grad here, as the cache stores it ({note})"
        else:
            b = {k: v.to(dev) for k, v in got.items()}
        extra["fed_from"] = note
    setup.model.train()
    m = measure_step(setup.model, _step_fn(setup, b, dev), num_layers, repeats)
    counts = param_counts(setup.model)
    if not report["model"]:
        inner = backbone(setup.model)
        trainable_blocks = model_cfg.trainable_blocks(num_layers)
        report["model"] = {
            "name_or_path": model_cfg.name_or_path,
            "model_type": inner.config.model_type,
            "num_layers": num_layers,
            "trainable_layers": trainable_blocks,
            "first_trainable_block": min(trainable_blocks),
            "hidden_size": inner.config.hidden_size,
            "lora_r": lora.r,
            "dtype": str(next(setup.model.parameters()).dtype).removeprefix("torch."),
            "device": str(dev),
            "autocast": "bfloat16" if dev.type == "cuda" else None,
            "_shape": shape_of(
                setup.model,
                batch["input_ids"].shape[0],
                batch["input_ids"].shape[1],
                lora.r,
                padded=bool((batch["attention_mask"] == 0).any()),
            ),
        }
    return {
        "description": MODE_HELP[mode],
        "saved_bytes_total": m.saved_bytes_total,
        "saved_bytes_by_block": m.saved_bytes_by_block,
        "prefix_saved_bytes": None,  # filled in once the forward split is known
        "autograd_nodes": sum(m.nodes_by_block.values()),
        "autograd_nodes_by_block": m.nodes_by_block,
        "trainable_params": counts["trainable_params"],
        "frozen_params": counts["frozen_params"],
        "step_seconds": m.step_seconds,
        "cuda_peak_bytes": m.cuda_peak_bytes,
        "cuda_step_bytes": m.cuda_step_bytes,
        **({"cuda_note": "not measured on CPU"} if m.cuda_peak_bytes is None else {}),
        **extra,
    }


def ratios(report: dict) -> dict:
    """The relations the product promises: no_grad vs LoRA-everywhere against K/L, and the prefix's share."""
    modes = report["modes"]
    num_trainable, n = len(report["model"]["trainable_layers"]), report["model"]["num_layers"]
    out: dict = {"k_over_l": num_trainable / n}
    if all("saved_bytes_total" in modes.get(m, {}) for m in ("topk_no_grad", "lora_all")):
        out["topk_no_grad_over_lora_all"] = (
            modes["topk_no_grad"]["saved_bytes_total"] / modes["lora_all"]["saved_bytes_total"]
        )
    if all("saved_bytes_total" in modes.get(m, {}) for m in ("topk_no_grad", "topk_autograd_input_grads")):
        out["topk_no_grad_over_input_grads"] = (
            modes["topk_no_grad"]["saved_bytes_total"] / modes["topk_autograd_input_grads"]["saved_bytes_total"]
        )
    return out


def cache_batch(data: dict, training, split: str, n: int) -> StoredBatch:
    """A ``stored`` source reading the first ``n`` examples of ``split`` from the real prefix cache at
    ``training.cache_dir``, when it exists and its fingerprint matches this model, split and data."""

    def get(clf):
        try:
            fp = fingerprint(clf, data, training)
            cache = load_cache(cache_path(training.cache_dir, fp), fp, training.cache_verify)
        except CacheInvalid as e:
            return None, f"prefix cache not used: {e}"
        b = cache.split(split, data[split], clf.pad_token_id).batch(np.arange(n), clf.device)
        return b, f"prefix cache at {cache.path} (fingerprint matches)"

    return get
