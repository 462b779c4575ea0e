"""Prefix activation cache: the frozen prefix's output, computed once, fingerprinted, reused every epoch.

With the prefix frozen and deterministic (eval mode, no dropout), the hidden states entering block
``first`` never change for a given example, so ``training.prefix_mode: cache`` computes them once
(eval mode, ``no_grad``, big length-sorted batches) over every split, stores them, and trains the
top K blocks on batches re-padded from the store:

    build  : embed → blocks[0:first]  once per example                 → data/04_feature/prefix_cache
    epochs : cache → blocks[first:L-1] → last block at the pooled token → norm → score

Stored per example: the *unpadded* hidden states (length, D). Under right padding (``collate``) a
real token never attends to a padding token, so its hidden state does not depend on the batch it
was computed in, and re-padding from the store gives the live path's values.

On disk (one cache per directory)::

    manifest.json                fingerprint, dtype, hidden size, per split: examples, tokens, shards
                                 (file, examples, tokens, bytes, sha256), total bytes, build seconds
    <split>-00000.safetensors    "hidden" (tokens, D): the examples' states back to back, split order;
                                 "lengths" (examples,) int32

The fingerprint names everything the stored values depend on: the prefix's weights and the model
config (hashed), the block split, the tokenizer (hashed), ``max_length``, the storage and compute
dtypes, and the tokenised data (hashed). A cache whose fingerprint differs, whose manifest is
unreadable, or whose shard is missing, truncated or fails its checksum is reported (which field
changed, which shard is bad) and rebuilt; it is never used. A matching cache is reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from toptune.config import TrainingConfig
from toptune.data import Encoded, batch_indices, collate
from toptune.model import backbone
from toptune.split import run_prefix, run_top
from toptune import distributed
from toptune.train import Batch, Batches, EvalResult, LogitsFn, TrainResult, autocast, eval_split, train

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Version of the on-disk layout; a cache of another version is rebuilt."""
MANIFEST = "manifest.json"
SHARD_BYTES = 1 << 30
"""Largest shard file (examples are never split across shards)."""
BUILD_BATCH_TOKENS = {"cpu": 1024, "cuda": 32768}
"""Token budget (B × T) of one batch while building (length-sorted, so nearly no padding). On CPU
small batches win: their activations stay in cache (measured on 2 cores, width 256: 1024 tokens
6.8 s, 16384 tokens 10.3 s for the same split); a GPU wants large ones."""
BUCKET_WINDOW = 0
"""Length bucketing sorts windows of this many batches (0 = the whole split)."""
_HASH_CHUNK = 1 << 24


class CacheInvalid(RuntimeError):
    """The cache on disk cannot be used; the message says why (stale field, bad shard, …)."""


# --------------------------------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------------------------------

# Config keys that do not change the prefix's output (labels only name the score head's rows).
_CONFIG_KEYS_IGNORED = {"id2label", "label2id", "num_labels", "problem_type", "_name_or_path", "name_or_path",
                        "transformers_version", "architectures", "torch_dtype", "dtype"}


def _update_tensor(h, t: Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(memoryview(t.view(torch.uint8).numpy()))  # no copy


def model_weights_hash(model: nn.Module, first: int) -> str:
    """sha256 of what the prefix computes with: the model config (label names aside), the token
    embedding, blocks ``0 … first-1`` and the rotary frequencies."""
    inner = backbone(model)
    h = hashlib.sha256()
    config = {k: v for k, v in inner.config.to_dict().items() if k not in _CONFIG_KEYS_IGNORED}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(str(getattr(inner.config, "_attn_implementation", "")).encode())
    modules = [("embed_tokens", inner.embed_tokens)] + [(f"layers.{i}", inner.layers[i]) for i in range(first)]
    for prefix, module in modules:
        for name, t in sorted(module.state_dict().items()):
            h.update(f"{prefix}.{name}".encode())
            _update_tensor(h, t)
    _update_tensor(h, inner.rotary_emb.inv_freq)
    return h.hexdigest()


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the tokenizer's definition: its ``tokenizer.json`` file when loaded from a local
    directory (vocabulary, merges, normaliser, pre-tokeniser: ~10 ms), else the serialised backend
    (~0.5 s for Qwen's 151k tokens); plus what can change in memory (added tokens, size, pad token)."""
    h = hashlib.sha256()
    file = Path(str(getattr(tokenizer, "name_or_path", ""))) / "tokenizer.json"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if file.is_file():
        h.update(file.read_bytes())
    elif backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(json.dumps(sorted(tokenizer.get_added_vocab().items())).encode())
    h.update(f"{type(tokenizer).__name__}|n={len(tokenizer)}|pad={tokenizer.pad_token_id}|side={tokenizer.padding_side}".encode())
    return h.hexdigest()


def data_hash(data: dict[str, Encoded]) -> str:
    """sha256 of the token ids of every split (labels do not change hidden states and are left out)."""
    h = hashlib.sha256()
    for name in sorted(data):
        enc = data[name]
        h.update(f"{name}:{len(enc)}".encode())
        h.update(enc.lengths().tobytes())
        if len(enc):
            h.update(np.fromiter((t for x in enc.input_ids for t in x), dtype=np.int64).tobytes())
    return h.hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def weights_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the backbone's weights (what the blocks compute in, autocast aside)."""
    return next(backbone(model).parameters()).dtype


def compute_dtype(model: nn.Module, device: torch.device) -> str:
    """How the prefix is computed: device type, weights' dtype, and bf16 autocast on CUDA."""
    weights = _dtype_name(weights_dtype(model))
    return f"{device.type}/{weights}" + ("/bf16-autocast" if device.type == "cuda" else "")


def storage_dtype(cfg: TrainingConfig, model: nn.Module) -> torch.dtype:
    """``training.cache_dtype``: ``auto`` = the model weights' dtype; or ``float32`` / ``bfloat16``."""
    if cfg.cache_dtype == "auto":
        return weights_dtype(model)
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.cache_dtype]


def fingerprint(clf, data: dict[str, Encoded], cfg: TrainingConfig) -> dict:
    """Everything the stored hidden states depend on; a cache is valid only for an equal fingerprint."""
    return {
        "format": CACHE_FORMAT,
        "model_weights": model_weights_hash(clf.model, clf.first_trainable_layer),
        "num_layers": clf.num_layers,
        "first_trainable_block": clf.first_trainable_layer,
        "tokenizer": tokenizer_hash(clf.tokenizer),
        "max_length": cfg.max_length,
        "dtype": _dtype_name(storage_dtype(cfg, clf.model)),
        "compute": compute_dtype(clf.model, clf.device),
        "data": data_hash(data),
    }


def fingerprint_diff(old: dict, new: dict) -> list[str]:
    """One phrase per field that differs: ``max_length changed (128 → 64)``; hashes shortened."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a != b:
            short = lambda v: v[:12] if isinstance(v, str) and len(v) == 64 else v  # noqa: E731
            out.append(f"{key} changed ({short(a)} → {short(b)})")
    return out


# --------------------------------------------------------------------------------------------------
# The cache in memory
# --------------------------------------------------------------------------------------------------


def pooled_positions(enc: Encoded, pad_token_id: int | None) -> np.ndarray:
    """(N,) per example, the stock classifier's pooling position: the rightmost token that is not
    ``pad_token_id`` (0 if every token is), as :func:`toptune.split.pool_index` finds it in a batch."""
    out = np.zeros(len(enc), dtype=np.int64)
    for i, ids in enumerate(enc.input_ids):
        if pad_token_id is None:
            out[i] = len(ids) - 1
        else:
            nz = np.flatnonzero(np.asarray(ids) != pad_token_id)
            out[i] = nz[-1] if len(nz) else 0
    return out


@dataclass
class CachedSplit:
    """One split's stored hidden states, with what re-padding needs."""

    hidden: Tensor
    """(tokens + 1, D): the examples' states back to back; the extra last row is zeros (padding)."""
    lengths: np.ndarray
    """(N,) tokens per example."""
    offsets: np.ndarray
    """(N,) row of each example's first token in ``hidden``."""
    pooled: np.ndarray
    """(N,) pooling position per example."""
    labels: np.ndarray
    """(N,) class index per example."""
    dtype: torch.dtype
    """Dtype the blocks take (the compute dtype; a bf16 store is cast up per batch)."""

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, idx: np.ndarray, device: torch.device) -> Batch:
        """Right-padded batch of examples ``idx``: ``hidden`` (B, T, D), ``attention_mask`` (B, T),
        ``pooled`` (B,), ``labels`` (B,), as ``collate`` + the live prefix would give."""
        lens = self.lengths[idx]
        width = int(lens.max())
        pos = np.arange(width)
        real = pos[None, :] < lens[:, None]  # (B, T)
        rows = np.where(real, self.offsets[idx][:, None] + pos[None, :], len(self.hidden) - 1)  # pad → zero row
        hidden = self.hidden.index_select(0, torch.from_numpy(rows.reshape(-1))).view(len(idx), width, -1)
        return {
            "hidden": hidden.to(device=device, dtype=self.dtype, non_blocking=True),
            "attention_mask": torch.from_numpy(real.astype(np.int64)).to(device),
            "pooled": torch.from_numpy(self.pooled[idx]).to(device),
            "labels": torch.from_numpy(self.labels[idx]).to(device),
        }


@dataclass
class PrefixCache:
    """A valid cache: where it lives, what it is for, and its splits' hidden states."""

    path: Path
    fingerprint: dict
    hidden: dict[str, Tensor]
    """Per split, (tokens, D) in the storage dtype."""
    lengths: dict[str, np.ndarray]
    bytes: int
    """Size on disk (shards + manifest)."""
    status: str
    """``built`` (this call built it) or ``reused``."""
    build_seconds: float | None = None
    """Wall time of the build (None when reused)."""
    reason: str | None = None
    """Why it was (re)built: ``no cache``, ``stale: …``, ``shard … truncated``, …"""
    compute_dtype: torch.dtype = torch.float32
    extra: dict = field(default_factory=dict)

    def split(self, name: str, enc: Encoded, pad_token_id: int | None) -> CachedSplit:
        """The split ``name`` with the labels and pooling positions of ``enc`` (its tokenised data)."""
        hidden = self.hidden[name]
        hidden = torch.cat([hidden, hidden.new_zeros(1, hidden.shape[1])])  # padding row
        lengths = self.lengths[name]
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return CachedSplit(hidden, lengths, offsets, pooled_positions(enc, pad_token_id),
                           np.asarray(enc.labels, dtype=np.int64), self.compute_dtype)

    def summary(self) -> dict:
        """Flat facts for logging: path, status, bytes, build seconds, fingerprint."""
        return {"path": str(self.path), "status": self.status, "reason": self.reason, "bytes": self.bytes,
                "build_seconds": self.build_seconds, "examples": {k: int(len(v)) for k, v in self.lengths.items()},
                "tokens": {k: int(v.sum()) for k, v in self.lengths.items()}, "fingerprint": self.fingerprint}


# --------------------------------------------------------------------------------------------------
# Build, store, validate, load
# --------------------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@torch.inference_mode()
def compute_split(clf, enc: Encoded, dtype: torch.dtype, batch_tokens: int | None = None,
                  bar: tqdm | None = None) -> Tensor:
    """(tokens, D) hidden states entering block ``clf.first`` for every example of ``enc``, back to
    back in split order, in ``dtype`` on the CPU. Runs in length-sorted batches of ~``batch_tokens``."""
    lengths = enc.lengths()
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    dim = backbone(clf.model).config.hidden_size
    out = torch.empty((int(offsets[-1]), dim), dtype=dtype)
    batch_tokens = batch_tokens or BUILD_BATCH_TOKENS.get(clf.device.type, 8192)
    order = np.argsort(-lengths, kind="stable")  # longest first: the first batch shows the peak memory
    i = 0
    while i < len(order):
        width = int(lengths[order[i]])
        idx = order[i : i + max(1, batch_tokens // width)]
        b = collate([enc.input_ids[j] for j in idx], [0] * len(idx), clf.pad_token_id)
        ids, mask = b["input_ids"].to(clf.device), b["attention_mask"].to(clf.device)
        with autocast(clf.device):
            hidden = run_prefix(clf.model, ids, mask, clf.first_trainable_layer)  # (B, T, D)
        real = hidden[mask.bool()].to(dtype).cpu()  # (Σ lengths, D), example by example
        dest = np.concatenate([np.arange(offsets[j], offsets[j + 1]) for j in idx])
        out[torch.from_numpy(dest)] = real
        if bar is not None:
            bar.update(len(idx))
        i += len(idx)
    return out


def _write_split(directory: Path, name: str, hidden: Tensor, lengths: np.ndarray) -> list[dict]:
    """Shards of at most ``SHARD_BYTES``, whole examples each; returns their manifest entries."""
    row_bytes = hidden.shape[1] * hidden.element_size()
    shards, start, tok = [], 0, 0
    while start < len(lengths) or not shards:
        stop, size = start, 0
        while stop < len(lengths) and (stop == start or size + lengths[stop] * row_bytes <= SHARD_BYTES):
            size += int(lengths[stop]) * row_bytes
            stop += 1
        n_tok = int(lengths[start:stop].sum())
        file = f"{name}-{len(shards):05d}.safetensors"
        save_file({"hidden": hidden[tok : tok + n_tok].contiguous(),
                   "lengths": torch.from_numpy(lengths[start:stop].astype(np.int32))}, str(directory / file))
        shards.append({"file": file, "examples": stop - start, "tokens": n_tok,
                       "bytes": (directory / file).stat().st_size, "sha256": _sha256_file(directory / file)})
        start, tok = stop, tok + n_tok
    return shards


def build_cache(clf, data: dict[str, Encoded], cfg: TrainingConfig, path: str | Path, fp: dict | None = None,
                progress: bool = True, reason: str = "no cache") -> PrefixCache:
    """Run the prefix once over every split (eval mode, ``no_grad``) and store it at ``path``.

    Written to a temporary directory first and renamed into place, so an interrupted build leaves
    no cache that looks complete.
    """
    path = Path(path)
    fp = fp or fingerprint(clf, data, cfg)
    dtype = storage_dtype(cfg, clf.model)
    t0 = time.perf_counter()
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    was_training = clf.model.training
    clf.model.eval()  # deterministic prefix: no dropout anywhere
    hidden, lengths, splits = {}, {}, {}
    try:
        total = sum(len(e) for e in data.values())
        with tqdm(total=total, desc="prefix cache", unit="ex", disable=not progress, mininterval=1.0) as bar:
            for name in sorted(data):
                enc = data[name]
                bar.set_postfix(split=name)
                hidden[name] = compute_split(clf, enc, dtype, bar=bar)
                lengths[name] = enc.lengths()
                splits[name] = {"examples": len(enc), "tokens": int(lengths[name].sum()),
                                "shards": _write_split(tmp, name, hidden[name], lengths[name])}
    finally:
        clf.model.train(was_training)
    seconds = time.perf_counter() - t0
    shard_bytes = sum(s["bytes"] for sp in splits.values() for s in sp["shards"])
    manifest = {"format": CACHE_FORMAT, "fingerprint": fp, "dtype": _dtype_name(dtype),
                "compute_dtype": _dtype_name(weights_dtype(clf.model)), "hidden_size": int(next(iter(hidden.values())).shape[1]),
                "splits": splits, "shard_bytes": shard_bytes, "build_seconds": seconds, "built_at": time.time()}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    nbytes = shard_bytes + (path / MANIFEST).stat().st_size
    log.info("prefix cache built at %s in %.1f s: %d examples, %s on disk (%s)", path, seconds, total,
             human_bytes(nbytes), manifest["dtype"])
    return PrefixCache(path, fp, hidden, lengths, nbytes, "built", seconds, reason, weights_dtype(clf.model))


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def load_cache(path: str | Path, fp: dict, verify: bool = True) -> PrefixCache:
    """The cache at ``path`` if it is complete, intact and made for fingerprint ``fp``; else
    :class:`CacheInvalid` saying why (no cache, stale field(s), missing / truncated / corrupt shard)."""
    path = Path(path)
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise CacheInvalid(f"no cache at {path}" if not path.exists() else f"{path} has no {MANIFEST} (incomplete build)")
    try:
        manifest = json.loads(manifest_file.read_text())
        stored_fp, splits = manifest["fingerprint"], manifest["splits"]
    except (ValueError, KeyError, TypeError) as e:
        raise CacheInvalid(f"{manifest_file} is unreadable ({type(e).__name__}: {e})") from None
    if manifest.get("format") != CACHE_FORMAT:
        raise CacheInvalid(f"cache format {manifest.get('format')} is not the current {CACHE_FORMAT}")
    changed = fingerprint_diff(stored_fp, fp)
    if changed:
        raise CacheInvalid("stale: " + "; ".join(changed))
    hidden, lengths = {}, {}
    for name, sp in splits.items():
        parts_h, parts_l = [], []
        for shard in sp["shards"]:
            f = path / shard["file"]
            if not f.is_file():
                raise CacheInvalid(f"shard {shard['file']} is missing")
            size = f.stat().st_size
            if size != shard["bytes"]:
                raise CacheInvalid(f"shard {shard['file']} is truncated or altered ({size} bytes, manifest says {shard['bytes']})")
            if verify and _sha256_file(f) != shard["sha256"]:
                raise CacheInvalid(f"shard {shard['file']} fails its sha256 checksum (corrupt)")
            try:
                tensors = load_file(str(f))
            except Exception as e:  # safetensors raises its own error types
                raise CacheInvalid(f"shard {shard['file']} is unreadable ({e})") from None
            h, n = tensors.get("hidden"), tensors.get("lengths")
            if h is None or n is None or h.shape[0] != shard["tokens"] or int(n.sum()) != shard["tokens"] \
                    or len(n) != shard["examples"] or h.shape[1] != manifest["hidden_size"]:
                raise CacheInvalid(f"shard {shard['file']} does not match its manifest entry")
            parts_h.append(h)
            parts_l.append(n.numpy().astype(np.int64))
        hidden[name] = torch.cat(parts_h) if len(parts_h) > 1 else parts_h[0]
        lengths[name] = np.concatenate(parts_l)
    nbytes = manifest["shard_bytes"] + manifest_file.stat().st_size
    cdt = getattr(torch, manifest.get("compute_dtype", "float32"))
    return PrefixCache(path, stored_fp, hidden, lengths, nbytes, "reused", None, None, cdt)


def prepare_cache(clf, data: dict[str, Encoded], cfg: TrainingConfig, path: str | Path | None = None,
                  progress: bool | None = None, rebuild: bool = False) -> PrefixCache:
    """Reuse the cache at ``path`` (default ``training.cache_dir``) when valid for this model, split,
    tokenizer, max_length, dtype and data; otherwise say why and build it."""
    path = Path(path or cfg.cache_dir)
    progress = cfg.progress if progress is None else progress
    fp = fingerprint(clf, data, cfg)
    if _prefix_dropout(clf) > 0:
        log.warning("the model's attention_dropout is %s: the prefix is cached in eval mode (no dropout), "
                    "the live no_grad prefix would apply it", _prefix_dropout(clf))
    if rebuild:
        return build_cache(clf, data, cfg, path, fp, progress, reason="rebuild requested")
    try:
        cache = load_cache(path, fp)
    except CacheInvalid as e:
        reason = str(e)
        if path.exists():
            log.warning("prefix cache at %s is not usable: %s; rebuilding", path, reason)
        else:
            log.info("no prefix cache at %s yet; building it", path)
        return build_cache(clf, data, cfg, path, fp, progress, reason=reason)
    # The stored examples must be the data's (the data hash says so; lengths are a cheap second check).
    for name, enc in data.items():
        if name not in cache.lengths or not np.array_equal(cache.lengths[name], enc.lengths()):
            return build_cache(clf, data, cfg, path, fp, progress, reason=f"split {name} disagrees with the data")
    log.info("prefix cache at %s reused (%s, fingerprint matches)", path, human_bytes(cache.bytes))
    return cache


def _prefix_dropout(clf) -> float:
    return float(getattr(backbone(clf.model).config, "attention_dropout", 0.0) or 0.0)


# --------------------------------------------------------------------------------------------------
# Batches from the cache
# --------------------------------------------------------------------------------------------------


def bucketed_indices(lengths: np.ndarray, batch_size: int, seed: int, window: int = 0) -> list[np.ndarray]:
    """Batches of similar length, in a seeded random order.

    A seeded permutation is cut into windows of ``window`` batches (0 = the whole split), each
    window is stably sorted by length (so examples of one length stay in random order), cut into
    batches, and the batches are shuffled. Same count and sizes of batches as unbucketed.
    """
    rng = np.random.default_rng(seed)
    n = len(lengths)
    perm = rng.permutation(n)
    span = n if window <= 0 else window * batch_size
    order = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in
                            (perm[i : i + span] for i in range(0, n, span))]) if n else perm
    out = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    rng.shuffle(out)
    return out


def padding_fraction(lengths: np.ndarray, batches: Iterable[np.ndarray]) -> float:
    """Share of the padded (B × T) positions that are padding."""
    padded = real = 0
    for idx in batches:
        lens = lengths[idx]
        padded += len(idx) * int(lens.max())
        real += int(lens.sum())
    return 1 - real / padded if padded else 0.0


def bucketing_padding(lengths: np.ndarray, batch_size: int, seed: int, epochs: int = 1) -> dict[str, float]:
    """Padding share of the train batches without and with length bucketing, averaged over the
    first ``epochs`` epochs (epoch ``e`` shuffles with seed ``seed + e``, as training does)."""
    def mean(batches_of) -> float:
        return float(np.mean([padding_fraction(lengths, batches_of(seed + e)) for e in range(epochs)]))

    return {"padding_fraction_unbucketed": mean(lambda s: batch_indices(len(lengths), batch_size, True, s)),
            "padding_fraction_bucketed": mean(lambda s: bucketed_indices(lengths, batch_size, s, BUCKET_WINDOW))}


def epoch_indices(split: CachedSplit, batch_size: int, shuffle: bool, seed: int, bucket: bool) -> list[np.ndarray]:
    """Example indices per batch. Unbucketed = exactly the live modes' order (``data.batch_indices``);
    bucketed = :func:`bucketed_indices` (training) or length-sorted (evaluation, then restored)."""
    if not bucket:
        return batch_indices(len(split), batch_size, shuffle, seed)
    if shuffle:
        return bucketed_indices(split.lengths, batch_size, seed, BUCKET_WINDOW)
    order = np.argsort(split.lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def cached_batches(split: CachedSplit, batch_size: int, shuffle: bool, seed: int, bucket: bool,
                   device: torch.device) -> Batches:
    """Batches re-padded from the cache, reshuffled per epoch with seed ``seed + epoch``."""

    def load(indices: Iterable[np.ndarray]) -> Iterator[Batch]:
        return (split.batch(idx, device) for idx in indices)

    return Batches(len(split), lambda epoch: epoch_indices(split, batch_size, shuffle, seed + epoch, bucket), load)


def cached_logits(model: nn.Module, first: int) -> LogitsFn:
    """Logits of cached batches: blocks ``first …`` (fused; the last at the pooled token only), norm, score."""
    return lambda b: run_top(model, b["hidden"], b["attention_mask"], b["pooled"], first, fast=True)


# --------------------------------------------------------------------------------------------------
# Training and prediction on the cache
# --------------------------------------------------------------------------------------------------


def prefix_modules(clf) -> list[nn.Module]:
    """The modules only the prefix uses: the token embedding and blocks ``0 … first-1``."""
    inner = backbone(clf.model)
    return [inner.embed_tokens, *[inner.layers[i] for i in range(clf.first_trainable_layer)]]


def prefix_bytes(clf) -> int:
    """Bytes of the prefix's weights (what cached epochs need not keep on the accelerator)."""
    seen, n = set(), 0
    for m in prefix_modules(clf):
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel() * p.element_size()
    return n


@contextlib.contextmanager
def prefix_offloaded(clf):
    """On CUDA, move the prefix's weights to the CPU for the duration (the cached epochs never touch
    them) and back afterwards, so prediction and export see the whole model on the device again."""
    if clf.device.type != "cuda":
        yield 0
        return
    modules = prefix_modules(clf)
    for m in modules:
        m.to("cpu")
    torch.cuda.empty_cache()
    try:
        yield prefix_bytes(clf)
    finally:
        for m in modules:
            m.to(clf.device)


def fit_cached(clf, data: dict[str, Encoded], cfg: TrainingConfig, cache: PrefixCache | None = None,
               cache_dir: str | Path | None = None, checkpoints=None) -> TrainResult:
    """Train on ``data['train']`` from the prefix cache (built or reused first), validating on the
    cached ``data['val']`` each epoch; same loop, optimiser and schedule as the live modes.

    With ``training.bucket_by_length`` batches hold examples of similar length (less padding);
    without it, batches are exactly the live modes' (same seed → same order → same losses).
    """
    cache = cache or prepare_cache(clf, data, cfg, cache_dir)
    train_split = cache.split("train", data["train"], clf.pad_token_id)
    train_b = cached_batches(train_split, cfg.batch_size, True, cfg.seed, cfg.bucket_by_length, clf.device)
    val_b = None
    if "val" in data and len(data["val"]):
        val_split = cache.split("val", data["val"], clf.pad_token_id)
        val_b = cached_batches(val_split, cfg.eval_batch_size, False, 0, cfg.bucket_by_length, clf.device)
    if cfg.bucket_by_length:
        pad = bucketing_padding(train_split.lengths, cfg.batch_size, cfg.seed)
        log.info("length bucketing: padding %.1f%% → %.1f%% of the train batches' positions",
                 100 * pad["padding_fraction_unbucketed"], 100 * pad["padding_fraction_bucketed"])
    with prefix_offloaded(clf) as freed:
        if freed:
            log.info("prefix weights (%s) moved off %s for the cached epochs", human_bytes(freed), clf.device)
        return train(clf.model, train_b, cached_logits(clf.model, clf.first_trainable_layer), cfg, clf.device, val_b, checkpoints)


def predict_cached(clf, cache: PrefixCache, name: str, enc: Encoded, batch_size: int,
                   bucket: bool = True) -> EvalResult:
    """Logits of every example of split ``name`` from the cache, in the split's order."""
    split = cache.split(name, enc, clf.pad_token_id)
    with prefix_offloaded(clf):
        return eval_split(clf.model, cached_batches(split, batch_size, False, 0, bucket, clf.device),
                          cached_logits(clf.model, clf.first_trainable_layer), clf.device)
