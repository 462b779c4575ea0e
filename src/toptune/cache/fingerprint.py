"""What the stored hidden states depend on, hashed: a cache is valid only for an equal fingerprint.

The fingerprint names the prefix's weights and the model config (hashed), the block split, the
tokenizer (hashed), ``max_length``, the storage and compute dtypes, and the tokenised data (hashed).
Labels are left out: they do not change hidden states (they come from the data at read time).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from toptune.config import TrainingConfig
from toptune.data.tokens import Encoded, token_digest
from toptune.io.hashing import files_sha256
from toptune.model.load import backbone
from toptune.model.precision import DTYPES, weights_dtype

CACHE_FORMAT = 2
"""Version of the on-disk layout (2: raw shards streamed to disk, read through memory maps); a
cache of another version is rebuilt."""

# Config keys that do not change the prefix's output (labels only name the score head's rows).
_CONFIG_KEYS_IGNORED = {
    "id2label",
    "label2id",
    "num_labels",
    "problem_type",
    "_name_or_path",
    "name_or_path",
    "transformers_version",
    "architectures",
    "torch_dtype",
    "dtype",
}


_DEVICE_CHUNK = 1 << 26
"""32-bit words summed per step of a device-side digest (512 MiB of int64 at a time)."""
_MIX = (0x9E3779B97F4A7C15 - (1 << 64), 0x632BE59BD9B4E019, 0x5851F42D4C957F2D, 0x14057B7EF767814F)
"""Odd 64-bit constants of the device digest's two position-weighted sums."""


def device_digest(t: Tensor) -> bytes:
    """16 bytes naming the bits of a CUDA tensor, computed where it lives: two sums of its 32-bit words,
    each word weighted by a different affine function of its position, in wrapping int64 arithmetic
    (exact, so the same bits give the same digest whatever the reduction order). Not a cryptographic
    hash — a changed, swapped or moved weight changes it with probability 1 - 2⁻⁶⁴ per sum — but it
    reads a 4B model's 6.7 GiB prefix in milliseconds, where copying it to the host for sha256 took ~10 s."""
    raw = t.detach().contiguous().view(-1).view(torch.uint8)
    raw = torch.cat([raw, raw.new_zeros(-raw.numel() % 4)]).view(torch.int32)
    sums = [torch.zeros((), dtype=torch.int64, device=t.device) for _ in range(2)]
    for start in range(0, raw.numel(), _DEVICE_CHUNK):
        words = raw[start : start + _DEVICE_CHUNK].to(torch.int64)
        pos = torch.arange(start, start + words.numel(), device=t.device, dtype=torch.int64)
        sums[0] += (words * (pos * _MIX[0] + _MIX[1])).sum()
        sums[1] += ((words + _MIX[2]) * (pos * _MIX[3] + 1)).sum()
    return torch.stack(sums).cpu().numpy().tobytes()


def _update_tensor(h, t: Tensor) -> None:
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if not t.numel():
        return
    if t.is_cuda:
        h.update(b"device-digest" + device_digest(t))
        return
    t = t.detach().contiguous()
    h.update(t.view(torch.uint8).numpy().data)  # no copy


def model_weights_hash(model: nn.Module, first_trainable_block: int) -> str:
    """sha256 of what the prefix computes with: the model config (label names aside), the token
    embedding, blocks ``0 … first_trainable_block-1`` and the rotary frequencies (weights on a GPU
    enter through :func:`device_digest`, the rest byte for byte)."""
    inner = backbone(model)
    h = hashlib.sha256()
    config = {k: v for k, v in inner.config.to_dict().items() if k not in _CONFIG_KEYS_IGNORED}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(str(getattr(inner.config, "_attn_implementation", "")).encode())
    prefix_blocks = [(f"layers.{i}", inner.layers[i]) for i in range(first_trainable_block)]
    modules = [("embed_tokens", inner.embed_tokens), *prefix_blocks]
    for prefix, module in modules:
        for name, t in sorted(module.state_dict().items()):
            h.update(f"{prefix}.{name}".encode())
            _update_tensor(h, t)
    _update_tensor(h, inner.rotary_emb.get_buffer("inv_freq"))
    return h.hexdigest()


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the tokenizer's definition: its ``tokenizer.json`` file's digest when loaded from a
    local directory (vocabulary, merges, normaliser, pre-tokeniser: ~10 ms), else the serialised backend
    (~0.5 s for Qwen's 151k tokens); plus what can change in memory (added tokens, size, pad token)."""
    h = hashlib.sha256()
    file = Path(str(getattr(tokenizer, "name_or_path", ""))) / "tokenizer.json"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if file.is_file():  # streamed: Qwen's file is ~11-19 MB
        h.update(files_sha256([file]).encode())
    elif backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(json.dumps(sorted(tokenizer.get_added_vocab().items())).encode())
    h.update(
        f"{type(tokenizer).__name__}|n={len(tokenizer)}|pad={tokenizer.pad_token_id}|side={tokenizer.padding_side}".encode()
    )
    return h.hexdigest()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def compute_dtype(model: nn.Module, device: torch.device) -> str:
    """How the prefix is computed: device type, weights' dtype, and bf16 autocast on CUDA."""
    weights = dtype_name(weights_dtype(model))
    return f"{device.type}/{weights}" + ("/bf16-autocast" if device.type == "cuda" else "")


def storage_dtype(cfg: TrainingConfig, model: nn.Module) -> torch.dtype:
    """``training.cache_dtype``: ``auto`` = what the prefix computes in (the weights' dtype);
    or ``float32`` / ``bfloat16``."""
    if cfg.cache_dtype == "auto":
        return weights_dtype(model)
    return DTYPES[cfg.cache_dtype]


def fingerprint(clf, data: dict[str, Encoded], cfg: TrainingConfig, block: int | None = None) -> dict:
    """Everything the hidden states entering ``block`` (default: the first trainable block) depend on; a cache
    is valid only for an equal fingerprint."""
    block = clf.first_trainable_block if block is None else block
    return {
        "format": CACHE_FORMAT,
        "model_weights": model_weights_hash(clf.model, block),
        "num_layers": clf.num_layers,
        "first_trainable_block": block,
        "tokenizer": tokenizer_hash(clf.tokenizer),
        "max_length": cfg.max_length,
        "dtype": dtype_name(storage_dtype(cfg, clf.model)),
        "compute": compute_dtype(clf.model, clf.device),
        "data": token_digest(data),
    }


def fingerprint_key(fp: dict) -> str:
    """A short digest of ``fp``: what each shard's receipt records, so a shard of another build is never resumed."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint_diff(old: dict, new: dict) -> list[str]:
    """One phrase per field that differs: ``max_length changed (128 → 64)``; hashes shortened."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a != b:
            short = lambda v: v[:12] if isinstance(v, str) and len(v) == 64 else v  # noqa: E731
            out.append(f"{key} changed ({short(a)} → {short(b)})")
    return out
