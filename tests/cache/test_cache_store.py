"""The streamed cache on disk: the shard plan, builds split across processes, interruption (Ctrl-C,
kill -9, a truncated shard) and resume, a partial cache never used, disk-full refusal, the
prefetch thread's shutdown, host memory that does not grow with the rows, ``prefix_mode: auto``.

Tiny checkpoints and rows of the bundled table; small shards (16 KiB) so the splits span several.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from support.cache import ReadWatch, config, stored_rows
from support.classifiers import classifier
from toptune.cache import (
    CacheDiskFull,
    CacheInvalid,
    build_cache,
    build_shards,
    cached_batches,
    choose_prefix_mode,
    epoch_indices,
    fingerprint,
    finish_cache,
    jobs_of_rank,
    load_cache,
    plan_shards,
    prefetched,
)
from toptune.cache.build import row_bytes
from toptune.cache.fingerprint import fingerprint_key
from toptune.cache.plan import shard_bytes_of
from toptune.cache.shard import BUILD_BATCH_TOKENS, ShardWriter
from toptune.cache.store import files_of
from toptune.config import TrainingConfig
from toptune.data.batches import rows_batch
from toptune.model.tiny import TinyQwenSpec, write_tiny_qwen
from toptune.prefix.forward import pool_index, run_prefix

SHARD = 16 << 10
"""16 KiB shards: ~60 rows of width-64 fp32 states each."""
PREFETCH_THREAD = "toptune-cache-prefetch"


def receipts(d: Path) -> list[str]:
    return sorted(p.name for p in d.glob("*.done.json"))


def temps(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if ".tmp-" in p.name)


def assert_same_rows(a, b, data) -> None:
    for name in data:
        assert torch.equal(stored_rows(a, name, data[name]), stored_rows(b, name, data[name])), name


@pytest.fixture(scope="module")
def fresh(tiny_qwen3, data, tmp_path_factory):
    """An uninterrupted single-process build with small shards: what every resumed build must equal."""
    clf = classifier(tiny_qwen3)
    return build_cache(
        clf,
        data,
        config(tmp_path_factory.mktemp("fresh")),
        tmp_path_factory.mktemp("fresh") / "c",
        progress=False,
        shard_bytes=SHARD,
    )


def test_plan_is_deterministic_and_covers_every_example(tiny_qwen3, data):
    clf = classifier(tiny_qwen3)
    rb = row_bytes(clf, TrainingConfig())
    plan = plan_shards(data, rb, SHARD)
    assert [j.signature() for j in plan] == [j.signature() for j in plan_shards(data, rb, SHARD)]
    for name, enc in data.items():
        jobs = [j for j in plan if j.split == name]
        assert len(jobs) > 1 and [j.index for j in jobs] == list(range(len(jobs)))
        order = np.concatenate([j.examples for j in jobs])
        assert sorted(order.tolist()) == list(range(len(enc)))  # every example once
        assert np.all(np.diff(enc.lengths()[order]) <= 0)  # longest first: the build order
        assert all(shard_bytes_of(j, rb) <= SHARD + 1024 for j in jobs)
    shares = [jobs_of_rank(plan, r, 3) for r in range(3)]
    assert sorted(j.name for s in shares for j in s) == sorted(j.name for j in plan)
    assert [j.name for j in shares[1]] == [j.name for i, j in enumerate(plan) if i % 3 == 1]


def reference_shard(clf, enc, job, batch_tokens: int) -> tuple[bytes, np.ndarray]:
    """A shard as the build must write it, computed here in plain sequence: the job's examples (longest
    first) in batches of ``batch_tokens // longest`` rows, each batch's real rows in order, a zero row;
    and its (example, length, pooled) index."""
    lengths = enc.lengths()[job.examples]
    parts, pooled, i = [], [], 0
    clf.model.eval()
    while i < len(job.examples):
        take = job.examples[i : i + max(1, batch_tokens // int(lengths[i]))]
        b = rows_batch(enc, take, clf.pad_token_id)
        with torch.inference_mode():
            hidden = run_prefix(clf.model, b["input_ids"], b["attention_mask"], clf.first_trainable_block)
        parts.append(hidden[b["attention_mask"].bool()])  # (Σ lengths, D)
        pooled.append(pool_index(b["input_ids"], clf.pad_token_id).numpy())
        i += len(take)
    parts.append(torch.zeros(1, parts[0].shape[1], dtype=parts[0].dtype))
    index = np.stack([job.examples, lengths, np.concatenate(pooled)], axis=1)
    return torch.cat(parts).view(torch.uint8).numpy().tobytes(), index


def test_shards_hold_what_the_prefix_computes_byte_for_byte(tiny_qwen3, data, tmp_path, fresh):
    """The build's one writer thread (it commits each shard while the next one computes) writes what the
    prefix computes, in order, nothing lost or moved: every shard file equals its batches' rows computed
    in plain sequence, byte for byte; every index its rows; every receipt the files' sizes and hashes."""
    clf, cfg = classifier(tiny_qwen3), config(tmp_path)
    key = fingerprint_key(fresh.fingerprint)
    plan = plan_shards(data, row_bytes(clf, cfg), SHARD)
    assert len(plan) > len(data), "several shards per split: the writer crosses shard ends"
    for job in plan:
        expected, index = reference_shard(clf, data[job.split], job, BUILD_BATCH_TOKENS["cpu"])
        names = files_of(job, key)
        written = (fresh.path / names["hidden"]).read_bytes()
        assert written == expected, job.name
        np.testing.assert_array_equal(np.load(fresh.path / names["index"]), index)
        receipt = json.loads((fresh.path / names["receipt"]).read_text())
        assert receipt["files"]["hidden"] == {"bytes": len(expected), "sha256": hashlib.sha256(expected).hexdigest()}
    assert not temps(fresh.path)


def test_writer_raises_its_threads_error_and_removes_what_it_did_not_commit(tmp_path):
    """The writer thread's first error reaches the building thread (at its next call, or at ``close``);
    the tasks after it do not run; a shard committed before it stays, one not committed leaves no file."""
    writer = ShardWriter(torch.device("cpu"))
    done = writer.open(tmp_path / "done.bin")
    writer.append(done, torch.ones(2, 4))
    writer.then(lambda: done.commit() and None)
    broken = writer.open(tmp_path / "broken.bin")
    writer.append(broken, torch.ones(2, 4))

    def disk_full() -> None:  # what a full disk raises from a shard's commit
        raise OSError(28, "No space left on device")

    writer.then(disk_full)
    ran = []
    try:
        writer.then(lambda: ran.append(1))
    except OSError:
        pass  # the thread met the error already: refused at once
    with pytest.raises(OSError, match="No space left"):
        writer.close()
    assert ran == [] and writer.thread.is_alive() is False
    assert (tmp_path / "done.bin").read_bytes() == torch.ones(2, 4).numpy().tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.bin"], "the uncommitted shard's temp file is gone"


@pytest.mark.slow
def test_ranks_build_their_shares_then_one_manifest(tiny_qwen3, data, tmp_path, fresh):
    clf, cfg = classifier(tiny_qwen3), config(tmp_path)
    fp, path = fingerprint(clf, data, cfg), tmp_path / "cache"
    plan = plan_shards(data, row_bytes(clf, cfg), SHARD)
    build_shards(clf, data, cfg, path, fp, plan, rank=0, world=2)
    assert [r.split("-")[:2] for r in receipts(path)] == sorted(j.name.split("-") for j in jobs_of_rank(plan, 0, 2))
    build_shards(clf, data, cfg, path, fp, plan, rank=1, world=2)
    with pytest.raises(CacheInvalid, match="incomplete"):  # every shard is there, but no manifest yet
        load_cache(path, fp)
    finish_cache(clf, cfg, path, fp, plan, build_seconds=0.0)
    assert_same_rows(load_cache(path, fp), fresh, data)


def test_interrupted_build_resumes_from_complete_shards(tiny_qwen3, data, tmp_path, fresh):
    """Ctrl-C once two shards are complete, then a rerun."""
    clf, cfg = classifier(tiny_qwen3), config(tmp_path)
    fp, path = fingerprint(clf, data, cfg), tmp_path / "cache"
    seen: list[int] = []  # complete shards at each read of an example's tokens

    class CtrlCAfterTwoShards(ReadWatch):
        """Token ids that raise KeyboardInterrupt — what Ctrl-C raises in the main thread — when the build
        reads them after two shards are complete: mid-build on every machine, however fast. Not a real
        SIGINT: a test run started in the background by a non-interactive shell inherits SIGINT ignored,
        and then neither a SIGINT nor ``_thread.interrupt_main`` interrupts anything."""

        def __getitem__(self, i):
            seen.append(len(receipts(path)))
            if seen[-1] >= 2:
                raise KeyboardInterrupt
            return super().__getitem__(i)

    interrupted = {k: dataclasses.replace(v, tokens=CtrlCAfterTwoShards(v.tokens)) for k, v in data.items()}
    try:
        build_cache(clf, interrupted, cfg, path, fp, progress=False, shard_bytes=SHARD)
    except KeyboardInterrupt:
        pass
    else:
        pytest.fail(
            f"the build was not interrupted: {len(seen)} reads, at most {max(seen, default=0)} complete shards seen"
        )
    done = receipts(path)
    total = len(plan_shards(data, row_bytes(clf, cfg), SHARD))
    assert 2 <= len(done) < total and not temps(path), "a Ctrl-C leaves complete shards and no temp file"
    with pytest.raises(CacheInvalid, match="incomplete"):  # a partial cache is never used …
        load_cache(path, fp)
    kept = {f: (path / f).stat().st_mtime_ns for f in done}
    cache = build_cache(clf, data, cfg, path, fp, progress=False, shard_bytes=SHARD)  # … it is resumed
    assert cache.resumed_shards == len(done) and cache.status == "built"
    assert kept == {f: (path / f).stat().st_mtime_ns for f in done}, "a complete shard was rewritten"
    assert len(receipts(path)) == total
    assert_same_rows(cache, fresh, data)


def test_truncated_shard_is_rebuilt_alone(tiny_qwen3, data, tmp_path, fresh):
    clf, cfg = classifier(tiny_qwen3), config(tmp_path)
    fp, path = fingerprint(clf, data, cfg), tmp_path / "cache"
    build_cache(clf, data, cfg, path, fp, progress=False, shard_bytes=SHARD)
    (shard,) = path.glob("train-00001-*.bin")  # named with the fingerprint's key
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 2])
    with pytest.raises(CacheInvalid, match=rf"{shard.name} is truncated"):
        load_cache(path, fp)
    cache = build_cache(clf, data, cfg, path, fp, progress=False, shard_bytes=SHARD)
    assert cache.resumed_shards == len(receipts(path)) - 1 and shard.stat().st_size == size
    assert_same_rows(cache, fresh, data)


KILLED_BUILD = """
import dataclasses, os, pickle, signal, sys
from pathlib import Path
from toptune.cache import build_cache
from toptune.config import LoraSettings, ModelConfig, TrainingConfig
from toptune.train.recipe import build_classifier
checkpoint, data_file, out, shard = sys.argv[1:5]
out, data = Path(out), pickle.load(open(data_file, "rb"))
clf = build_classifier(ModelConfig(name_or_path=checkpoint, trainable_layers=2), LoraSettings(r=4, alpha=8),
                       {0: "negative", 1: "neutral", 2: "positive"}, seed=0, device="cpu")
# kill -9 when the build reads tokens once a shard is complete and the next one's file is open
from support.cache import ReadWatch
class KillMidShard(ReadWatch):
    def __getitem__(self, i):
        if list(out.glob("*.done.json")) and list(out.glob(".*.bin.tmp-*")):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(i)
data = {k: dataclasses.replace(v, tokens=KillMidShard(v.tokens)) for k, v in data.items()}
build_cache(clf, data, TrainingConfig(progress=False), out, progress=False, shard_bytes=int(shard))
"""


@pytest.mark.slow
def test_killed_build_leaves_no_usable_cache_and_resumes(tiny_qwen3, data, tmp_path, fresh):
    path, data_file = tmp_path / "cache", tmp_path / "data.pkl"
    data_file.write_bytes(pickle.dumps(data))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_BUILD, str(tiny_qwen3), str(data_file), str(path), str(SHARD)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    done, left = receipts(path), temps(path)
    assert done and left and all(f".tmp-{socket.gethostname()}-" in t for t in left)
    clf, cfg = classifier(tiny_qwen3), config(tmp_path)
    fp = fingerprint(clf, data, cfg)
    with pytest.raises(CacheInvalid, match="incomplete"):
        load_cache(path, fp)
    # A temp file of a process that is alive (another rank's shard in flight) is left alone.
    alive = path / f".val-00000-{'0' * 16}.bin.tmp-{socket.gethostname()}-{os.getppid()}"
    alive.write_bytes(b"in flight")
    cache = build_cache(clf, data, cfg, path, fp, progress=False, shard_bytes=SHARD)
    assert temps(path) == [alive.name], "the dead process's temp files are removed, the live one's kept"
    assert cache.resumed_shards == len(done)
    assert_same_rows(cache, fresh, data)


def test_disk_full_is_refused_in_one_line(tiny_qwen3, data, tmp_path):
    clf, cfg = classifier(tiny_qwen3), config(tmp_path)
    path = tmp_path / "cache"
    rb = row_bytes(clf, cfg)
    needed = sum(shard_bytes_of(j, rb) for j in plan_shards(data, rb, SHARD))
    with pytest.raises(CacheDiskFull) as e:  # a disk with 4 KiB free
        build_cache(clf, data, cfg, path, progress=False, shard_bytes=SHARD, free_bytes=lambda d: 4096)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and f"needs {needed} bytes" in msg and "4096 bytes" in msg
    assert not list(path.glob("*.bin")) and not temps(path), "nothing written before refusing"
    # The same build with one byte fewer than it needs is refused, with exactly what it needs it goes.
    with pytest.raises(CacheDiskFull):
        build_cache(clf, data, cfg, path, progress=False, shard_bytes=SHARD, free_bytes=lambda d: needed - 1)
    assert build_cache(clf, data, cfg, path, progress=False, shard_bytes=SHARD, free_bytes=lambda d: needed).bytes > 0


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(PREFETCH_THREAD)]  # the pool's thread: <name>_0


def test_prefetch_thread_ends(tiny_qwen3, data, fresh):
    split = fresh.split("train", data["train"])
    batches = cached_batches(split, 8, True, 0, True, torch.device("cpu"), depth=2)

    def gen(epoch):  # the epoch's batches through the prefetch thread
        return batches.load(batches.order(epoch))

    direct = [split.batch(i, torch.device("cpu")) for i in epoch_indices(split, 8, True, 0, True)]
    got = list(gen(0))  # run to the end: same batches as gathered directly
    assert len(got) == len(direct) and all(
        torch.equal(a["hidden"], b["hidden"]) for a, b in zip(got, direct, strict=True)
    )
    assert not prefetch_threads()
    it = gen(1)
    next(it)
    it.close()  # early exit
    assert not prefetch_threads()
    with pytest.raises(RuntimeError, match="consumer"):  # an exception in the consumer's loop
        for _ in gen(2):
            raise RuntimeError("consumer failed")
    assert not prefetch_threads()

    def make(i):  # an exception in the producer reaches the consumer
        if i == 3:
            raise ValueError("item 3 unreadable")
        return i

    with pytest.raises(ValueError, match="item 3"):
        assert list(prefetched(make, range(10), depth=2)) == []
    assert not prefetch_threads()
    assert list(prefetched(lambda i: i * i, range(50), depth=1)) == [i * i for i in range(50)]


def test_cpu_batches_load_in_the_callers_thread(data, fresh):
    """On the CPU the default is no prefetch thread (its OpenMP pool would fight training's for the cores);
    the batches are the same as the thread's."""
    split = fresh.split("train", data["train"])
    default = cached_batches(split, 8, True, 0, True, torch.device("cpu"))
    it = default.load(default.order(0))
    first = next(it)
    assert not prefetch_threads()
    got = [first, *it]
    threaded = cached_batches(split, 8, True, 0, True, torch.device("cpu"), depth=2)
    want = list(threaded.load(threaded.order(0)))
    assert len(got) == len(want) and all(
        torch.equal(a["hidden"], b["hidden"]) and torch.equal(a["labels"], b["labels"])
        for a, b in zip(got, want, strict=True)
    )


# ---------------------------------------------------------------------------------------------------
# Host memory: anonymous RSS does not grow with the rows
# ---------------------------------------------------------------------------------------------------


MEASURE_ROWS = """
import json, sys
import pandas as pd
from support.cache import ROOT, anon_growth, config
from support.classifiers import ID2LABEL, classifier
from toptune.cache import fit_cached, prepare_cache
from toptune.config import DataConfig
import numpy as np
from toptune.data.prepare import texts_table
from toptune.data.tokens import encode
checkpoint, rows, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
clf = classifier(checkpoint, k=1)
table = texts_table(pd.read_csv(ROOT / "data" / "01_raw" / "reviews.csv"), DataConfig())[0].head(rows)
label2id = {v: k for k, v in ID2LABEL.items()}
enc = encode(table["text"].tolist(), clf.tokenizer, 64, [label2id[x] for x in table["label"]], table["id"].tolist())
data = {"train": enc, "val": enc.take(np.arange(64))}
cfg = config(__import__("pathlib").Path(out), epochs=1, batch_size=16, eval_batch_size=16)
with anon_growth() as build:
    cache = prepare_cache(clf, data, cfg)
with anon_growth() as train:
    fit_cached(clf, data, cfg, cache=cache)
print(json.dumps({"cache_bytes": cache.bytes, "build": build["bytes"], "train": train["bytes"]}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RssAnon is read from Linux's /proc")
def test_anonymous_memory_does_not_grow_with_rows(tmp_path, tokenizer_dir):
    """Build, then an epoch (with its validation pass), on 500 rows twice and on 4,000 rows, each in a
    fresh process: a process that ran other tests holds freed memory whose reuse would blur a few MiB.

    What is compared is the peak above the start of each phase. Besides the O(rows) index arrays,
    the allocator keeps some freed batch buffers for reuse: bounded by a few batches (flat from
    2,000 to 16,000 rows when measured), a small share of what 3,500 more rows add to the cache.
    The peak is sampled (every ms, by a thread that needs the GIL): a short spike between two reads is
    missed, more often on a loaded machine, so two runs of the same 500 rows differ by up to the spike
    (the build's: up to ~14 MB). The reference is the higher of the two, and the bound grows by their
    difference: what the sampling moved in this very run is no evidence of growth."""
    spec = TinyQwenSpec(
        model_type="qwen3",
        num_layers=2,
        hidden_size=128,
        intermediate_size=128,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
    )
    checkpoint = write_tiny_qwen(tmp_path / "wide", spec, tokenizer_dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    measured = {}
    for run, rows in (("a", 500), ("b", 500), ("large", 4000)):
        proc = subprocess.run(
            [sys.executable, "-c", MEASURE_ROWS, str(checkpoint), str(rows), str(tmp_path / run)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        measured[run] = json.loads(proc.stdout.strip().splitlines()[-1])
    a, b, large = measured["a"], measured["b"], measured["large"]
    grown = large["cache_bytes"] - a["cache_bytes"]
    print(
        f"rows 500 → 4000: cache {a['cache_bytes']} → {large['cache_bytes']} bytes; peak anon growth "
        f"build {a['build']}, {b['build']} → {large['build']}, training {a['train']}, {b['train']} → {large['train']}"
    )
    assert grown > 30 * 2**20, "the cache grows 8x, by tens of MiB"
    # A copy of the cache in memory would grow by `grown` (the old loader: twice).
    for phase, what in (
        ("build", "building holds a batch, not a shard or the split"),
        ("train", "training reads through memory maps, not a copy"),
    ):
        spread = abs(a[phase] - b[phase])
        assert spread < 0.5 * grown, f"{phase}: two runs of 500 rows {spread} bytes apart: too noisy to tell a copy"
        assert large[phase] - max(a[phase], b[phase]) < 0.25 * grown + spread, what


# ---------------------------------------------------------------------------------------------------
# prefix_mode: auto
# ---------------------------------------------------------------------------------------------------


def test_auto_measures_both_rates_and_applies_its_rules(tiny_qwen3, data, tmp_path):
    clf = classifier(tiny_qwen3)
    many = choose_prefix_mode(clf, data, config(tmp_path, prefix_mode="auto", epochs=3))
    assert many.compute_tokens_per_second > 0 and many.read_tokens_per_second > 0
    expected = "cache" if many.read_tokens_per_second > many.compute_tokens_per_second else "no_grad"
    assert many.mode == expected and "tokens/s" in many.reason
    rb = row_bytes(clf, config(tmp_path))
    assert many.cache_bytes == sum(shard_bytes_of(j, rb) for j in plan_shards(data, rb))
    one = choose_prefix_mode(clf, data, config(tmp_path, prefix_mode="auto", epochs=1))
    assert one.mode == "no_grad" and one.reason.startswith("1 epoch")
    full = choose_prefix_mode(clf, data, config(tmp_path, prefix_mode="auto", epochs=3), free_bytes=lambda d: 0)
    assert full.mode == "no_grad" and "needs" in full.reason and full.read_tokens_per_second == 0
    assert not [p for p in (tmp_path / "cache").iterdir()], "the read probe is removed"
    with pytest.raises(CacheInvalid, match="no cache at"):  # an empty directory is no cache, not a broken one
        load_cache(tmp_path / "cache", fingerprint(clf, data, config(tmp_path)))


def test_device_digest_names_the_bits():
    """The digest a GPU build hashes its prefix weights with (run here on the CPU: the same function)."""
    from toptune.cache.fingerprint import device_digest

    g = torch.Generator().manual_seed(0)
    w = torch.randn(1000, 7, generator=g).to(torch.bfloat16)  # 14,000 bytes: not a multiple of 4 words' worth
    assert device_digest(w) == device_digest(w.clone())
    flipped = w.clone()
    flipped.view(torch.int16)[123, 4] ^= 1  # one bit
    swapped = w.clone()
    swapped[[0, 1]] = w[[1, 0]]  # same values, other places
    digests = {device_digest(x) for x in (w, flipped, swapped, w[:999], torch.zeros_like(w))}
    assert len(digests) == 5
