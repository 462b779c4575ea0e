"""``training.cache_dir`` as many caches side by side: two configurations run in turn keep both caches,
the least recently used go beyond ``training.cache_max_bytes`` (never one a process holds), and a reuse
hashes a sample of the shards (``training.cache_verify: sample``) or all of them (``full``).

The tiny Qwen3 and the cache tests' 60 rows; caches of different K have the same size.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from support.cache import config
from support.classifiers import classifier
from toptune.cache import (
    CacheInvalid,
    build_cache,
    fingerprint,
    fit_cached,
    load_cache,
    predict_cached,
    prepare_cache,
    shelved,
)
from toptune.cache.shelf import release
from toptune.cache.store import check_shards, sampled_shards

SHARD = 16 << 10
"""16 KiB shards: a few dozen per cache."""


def flip(path, name: str) -> None:
    """One flipped bit in the middle of shard file ``name``: same size, wrong values."""
    raw = bytearray((path / name).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (path / name).write_bytes(bytes(raw))


def test_two_configurations_in_turn_keep_both_caches(tiny_qwen3, data, tmp_path):
    cfg = config(tmp_path)
    two, three = classifier(tiny_qwen3, k=2), classifier(tiny_qwen3, k=3)
    a, b = prepare_cache(two, data, cfg), prepare_cache(three, data, cfg)
    assert (a.status, b.status) == ("built", "built") and a.path.parent == b.path.parent == tmp_path / "cache"
    assert a.path != b.path
    for clf, first in ((two, a), (three, b), (two, a)):
        again = prepare_cache(clf, data, cfg)
        assert again.status == "reused" and again.path == first.path
    assert sorted(s.path for s in shelved(tmp_path / "cache")) == sorted([a.path, b.path])


def test_least_recently_used_go_beyond_max_bytes_but_not_one_in_use(tiny_qwen3, data, tmp_path):
    made = {}
    for k in (1, 2, 3):  # every cache the same size
        made[k] = prepare_cache(classifier(tiny_qwen3, k=k), data, config(tmp_path))
        release(made[k].lock)
    sizes = [s.bytes for s in shelved(tmp_path / "cache")]  # on disk: shards, indexes, receipts, manifest
    size = max(sizes)
    assert len(sizes) == 3 and size - min(sizes) < 100  # the manifests differ by a few digits
    held = prepare_cache(classifier(tiny_qwen3, k=1), data, config(tmp_path))  # k=1 used last, and held
    # room for two: k=2, least recently used, goes; k=1 (held) and k=3 stay
    tight = config(tmp_path, cache_max_bytes=int(2.5 * size))
    c = prepare_cache(classifier(tiny_qwen3, k=3), data, tight)
    assert c.status == "reused"
    kept = {s.path for s in shelved(tmp_path / "cache")}
    assert kept == {made[1].path, made[3].path} and not made[2].path.exists()
    # room for one: k=3 is the one this run uses, k=1 is held by a live reader: both stay
    prepare_cache(classifier(tiny_qwen3, k=3), data, config(tmp_path, cache_max_bytes=size))
    assert {s.path for s in shelved(tmp_path / "cache")} == kept
    release(held.lock)  # the reader is done: the next eviction takes it
    prepare_cache(classifier(tiny_qwen3, k=3), data, config(tmp_path, cache_max_bytes=size))
    assert {s.path for s in shelved(tmp_path / "cache")} == {made[3].path}


def test_sampled_verification_catches_a_flip_in_the_sample_and_full_in_any_shard(tiny_qwen3, data, tmp_path):
    clf, cfg = classifier(tiny_qwen3), config(tmp_path)
    fp = fingerprint(clf, data, cfg)
    cache = build_cache(clf, data, cfg, tmp_path / "c", fp, progress=False, shard_bytes=SHARD)
    manifest = cache.manifest
    shards = [s["hidden"]["file"] for sp in manifest["splits"].values() for s in sp["shards"]]
    sampled = sampled_shards(manifest, sample_bytes=1, seed=0)  # one shard drawn
    assert len(shards) > 4 and len(sampled) == 1 and sampled == sampled_shards(manifest, 1, seed=0)
    outside = next(s for s in shards if s not in sampled)
    flip(cache.path, outside)
    check_shards(cache.path, manifest, "sample", sample_bytes=1, seed=0)  # missed: not in this draw
    with pytest.raises(CacheInvalid, match=f"shard {outside} fails its sha256"):
        check_shards(cache.path, manifest, "full")
    flip(cache.path, outside)  # undone
    inside = next(iter(sampled))
    flip(cache.path, inside)
    with pytest.raises(CacheInvalid, match=f"shard {inside} fails its sha256"):
        check_shards(cache.path, manifest, "sample", sample_bytes=1, seed=0)
    # the default sample (256 MiB) covers a cache this small whole: a reuse rebuilds it
    assert sampled_shards(manifest, 256 << 20) == set(shards)
    with pytest.raises(CacheInvalid, match="sha256"):
        load_cache(cache.path, fp, verify="sample")


def test_full_verification_rebuilds_what_the_sample_missed(tiny_qwen3, data, tmp_path):
    clf, cfg = classifier(tiny_qwen3), config(tmp_path)
    cache = prepare_cache(clf, data, cfg)
    release(cache.lock)
    flip(cache.path, sorted(p.name for p in cache.path.glob("train-*.bin"))[0])
    rebuilt = prepare_cache(clf, data, dataclasses.replace(cfg, cache_verify="full"))
    assert rebuilt.status == "built" and "sha256" in rebuilt.reason and rebuilt.path == cache.path


def test_a_cache_of_the_earlier_layout_is_removed(tiny_qwen3, data, tmp_path):
    clf, cfg = classifier(tiny_qwen3), config(tmp_path)
    old = build_cache(clf, data, cfg, tmp_path / "cache", progress=False)  # straight into cache_dir
    assert (old.path / "manifest.json").is_file()
    new = prepare_cache(clf, data, cfg)
    assert new.path.parent == old.path and not (old.path / "manifest.json").exists()
    assert [s.path for s in shelved(tmp_path / "cache")] == [new.path]


@pytest.mark.slow
def test_fewer_blocks_train_on_a_deeper_cache_as_on_their_own(tiny_qwen3, data, tmp_path, plain_sgd):
    """K′ = 2 on the cache a K = 3 run built (block 1 of 4 run frozen per batch) against K′ = 2 on its own
    cache: the same logits, the same SGD steps (losses and trained weights), fp32 on the CPU."""
    cfg = config(tmp_path, epochs=2, bucket_by_length=False, lr=0.05)
    deep = prepare_cache(classifier(tiny_qwen3, k=3), data, cfg)
    a, b = classifier(tiny_qwen3, k=2), classifier(tiny_qwen3, k=2)
    served = prepare_cache(a, data, cfg)
    assert served.path == deep.path and served.status == "reused" and served.block == a.first_trainable_block - 1
    own = prepare_cache(b, data, config(tmp_path / "own"))
    assert own.block == b.first_trainable_block and own.path != deep.path
    for split in ("val", "test"):
        np.testing.assert_allclose(
            predict_cached(a, served, split, data[split], 16).logits,
            predict_cached(b, own, split, data[split], 16).logits,
            atol=1e-5,
            rtol=0,
        )
    start = {n: p.detach().clone() for n, p in a.model.named_parameters() if p.requires_grad}
    on_deep, on_own = fit_cached(a, data, cfg, cache=served), fit_cached(b, data, cfg, cache=own)
    np.testing.assert_allclose([s["loss"] for s in on_deep.steps], [s["loss"] for s in on_own.steps], rtol=1e-5)
    moved = max(float((p.detach() - start[n]).abs().max()) for n, p in a.model.named_parameters() if n in start)
    assert moved > 1e-3, f"training moved the weights by {moved:.2g} only"
    trained = dict(b.model.named_parameters())
    for name, p in a.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, trained[name], atol=1e-5, rtol=1e-4, msg=name)
    # a sweep over K builds at its deepest K's block up front
    swept = prepare_cache(classifier(tiny_qwen3, k=1), data, cfg, block=deep.block)
    assert swept.path == deep.path and swept.status == "reused"
