"""The cache on disk: its layout, per-shard receipts, clean-up, the manifest, validation.

One cache per directory (``training.cache_dir`` holds one such directory per fingerprint key:
:mod:`toptune.cache.shelf`)::

    manifest.json              written last, once every shard is complete: fingerprint, dtype, hidden
                               size, byte order, per split the shards (files, sizes, sha256)
    <split>-00000-<key>.bin    raw little-endian (tokens + 1, D) in the storage dtype (bf16 as its
                               16 bits): the shard's examples back to back, then one zero row (padding)
    <split>-00000-<key>.index.npy  (examples, 3) int64 per example in storage order: position in the
                               split, length, pooling position
    <split>-00000-<key>.done.json  the shard's receipt: fingerprint key, job signature, sizes, sha256

``<key>`` is the first 16 hex digits of the fingerprint's sha256, so builds of different data never
write to one name. Every file is written through :mod:`toptune.io.atomic` (a temporary name, fsync,
rename), so a name on disk always holds complete bytes; a receipt is written after its shard's files, so it
marks a complete shard. A rerun resumes from shards whose receipt matches (same fingerprint, same
job, files intact), and only the manifest makes a cache usable.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from toptune.cache.fingerprint import CACHE_FORMAT, fingerprint_diff, fingerprint_key
from toptune.cache.plan import ShardJob
from toptune.io.atomic import write_atomic
from toptune.io.debris import clear_debris
from toptune.io.hashing import file_sha256

MANIFEST = "manifest.json"
_OURS = re.compile(r"^[\w.]+-\d{5}(-[0-9a-f]{16})?\.(bin|index\.npy|done\.json|safetensors)$")


class CacheInvalid(RuntimeError):
    """The cache on disk cannot be used; the message says why (stale field, bad shard, …)."""


class CacheDiskFull(ValueError):
    """The disk cannot hold the cache; the message names the directory, bytes needed and bytes free."""


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def files_of(job: ShardJob, fp_key: str) -> dict[str, str]:
    """A shard's file names. They carry the fingerprint key: two builds of different data in one
    directory never write to the same name (the later one removes the other's files instead)."""
    stem = f"{job.name}-{fp_key}"
    return {"hidden": f"{stem}.bin", "index": f"{stem}.index.npy", "receipt": f"{stem}.done.json"}


# --------------------------------------------------------------------------------------------------
# Receipts, clean-up, manifest
# --------------------------------------------------------------------------------------------------


def check_file(directory: Path, file: str, entry: dict, verify: bool) -> None:
    """``file`` exists with the recorded size (and sha256 when ``verify``), else :class:`CacheInvalid`."""
    f = directory / file
    if not f.is_file():
        raise CacheInvalid(f"shard {file} is missing")
    size = f.stat().st_size
    if size != entry["bytes"]:
        raise CacheInvalid(f"shard {file} is truncated or altered ({size} bytes, recorded {entry['bytes']})")
    if verify:
        if file_sha256(f) != entry["sha256"]:
            raise CacheInvalid(f"shard {file} fails its sha256 checksum (corrupt)")


def write_receipt(directory: Path, job: ShardJob, fp_key: str, files: dict[str, dict]) -> dict:
    receipt = {
        "fingerprint": fp_key,
        "job": job.signature(),
        "split": job.split,
        "index": job.index,
        "examples": len(job.examples),
        "tokens": job.tokens,
        "files": files,
    }
    write_atomic(directory / files_of(job, fp_key)["receipt"], json.dumps(receipt).encode())
    return receipt


def read_receipt(directory: Path, job: ShardJob, fp_key: str, verify: bool = True) -> dict | None:
    """The job's receipt when the shard on disk is complete, of this fingerprint and job, and intact; else None."""
    try:
        names = files_of(job, fp_key)
        receipt = json.loads((directory / names["receipt"]).read_text())
        if receipt["fingerprint"] != fp_key or receipt["job"] != job.signature():
            return None
        for kind in ("hidden", "index"):
            check_file(directory, names[kind], receipt["files"][kind], verify)
        return receipt
    except (OSError, ValueError, KeyError, TypeError, CacheInvalid):
        return None


def remove_leftovers(directory: Path, fp_key: str, plan: list[ShardJob]) -> list[str]:
    """Remove what no build of ``fp_key`` / ``plan`` can use: temp files of dead processes on this
    host, receipts of another fingerprint or job and their shards, shard files the plan does not
    name (another plan, the older format). Live processes' temp files and this plan's shards stay."""
    removed = [Path(line.removeprefix("removed ")).name for line in clear_debris(directory)]
    jobs = {files_of(j, fp_key)["receipt"]: j for j in plan}
    names = {f for j in plan for f in files_of(j, fp_key).values()}
    for f in sorted(directory.iterdir()) if directory.is_dir() else []:
        if f.name.endswith(".done.json") and _OURS.match(f.name):
            job = jobs.get(f.name)
            try:
                r = json.loads(f.read_text())
                ok = job is not None and r["fingerprint"] == fp_key and r["job"] == job.signature()
            except (OSError, ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                removed.append(f.name)
        elif _OURS.match(f.name) and f.name not in names:
            removed.append(f.name)
    for name in removed:
        (directory / name).unlink(missing_ok=True)
    return removed


def cache_files(directory: Path) -> list[Path]:
    """The manifest and every shard file in ``directory`` (never anything else)."""
    if not directory.is_dir():
        return []
    return [f for f in directory.iterdir() if f.name == MANIFEST or _OURS.match(f.name)]


def remove_cache(directory: Path) -> None:
    """Remove the manifest and every shard file (a requested rebuild); other files are left alone."""
    for f in cache_files(directory):
        f.unlink(missing_ok=True)


def write_manifest(directory: Path, fp: dict, plan: list[ShardJob], meta: dict) -> dict:
    """The manifest, once every job of ``plan`` has its receipt (checked by size; each was hashed when
    written), with ``meta`` (``dtype``, ``compute_dtype``, ``hidden_size``, ``build_seconds``, …).
    The step after a build, run once (by one process when several built)."""
    key, splits = fingerprint_key(fp), dict[str, dict]()
    for job in plan:
        receipt = read_receipt(directory, job, key, verify=False)
        if receipt is None:
            raise CacheInvalid(f"shard {job.name} of {directory} is not complete: no manifest written")
        sp = splits.setdefault(job.split, {"examples": 0, "tokens": 0, "shards": []})
        sp["examples"] += len(job.examples)
        sp["tokens"] += job.tokens
        sp["shards"].append(
            {
                "name": job.name,
                "examples": len(job.examples),
                "tokens": job.tokens,
                **{kind: {"file": files_of(job, key)[kind], **receipt["files"][kind]} for kind in ("hidden", "index")},
            }
        )
    shard_bytes = sum(s[k]["bytes"] for sp in splits.values() for s in sp["shards"] for k in ("hidden", "index"))
    manifest = {
        "format": CACHE_FORMAT,
        "fingerprint": fp,
        **meta,
        "byteorder": sys.byteorder,
        "splits": splits,
        "shard_bytes": shard_bytes,
    }
    write_atomic(directory / MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


def read_manifest(directory: Path, fp: dict) -> dict:
    """The manifest of the cache at ``directory`` if it is made for ``fp``; else :class:`CacheInvalid`
    saying why (no cache, incomplete build, unreadable, other format, stale field(s))."""
    file = directory / MANIFEST
    if not file.is_file():
        raise CacheInvalid(
            f"{directory} has no {MANIFEST} (incomplete build)"
            if cache_files(directory)
            else f"no cache at {directory}"
        )
    try:
        manifest = json.loads(file.read_text())
        stored_fp, _ = manifest["fingerprint"], manifest["splits"]
    except (ValueError, KeyError, TypeError) as e:
        raise CacheInvalid(f"{file} is unreadable ({type(e).__name__}: {e})") from None
    if manifest.get("format") != CACHE_FORMAT:
        raise CacheInvalid(f"cache format {manifest.get('format')} is not the current {CACHE_FORMAT}")
    if manifest.get("byteorder") != sys.byteorder:
        raise CacheInvalid(f"cache written {manifest.get('byteorder')}-endian, this machine is {sys.byteorder}-endian")
    changed = fingerprint_diff(stored_fp, fp)
    if changed:
        raise CacheInvalid("stale: " + "; ".join(changed))
    return manifest


SAMPLE_BYTES = 256 << 20
"""``training.cache_verify: sample``: shards hashed per reuse, drawn at random until this many bytes (at
least one shard; the whole cache when it is smaller)."""


def sampled_shards(manifest: dict, sample_bytes: int, seed: int | None = None) -> set[str]:
    """Names of the hidden-state files a sampled check hashes: random shards (``seed``: repeatable) until
    ``sample_bytes`` are drawn."""
    files = [(s["hidden"]["file"], s["hidden"]["bytes"]) for sp in manifest["splits"].values() for s in sp["shards"]]
    order = np.random.default_rng(seed).permutation(len(files))
    chosen: set[str] = set()
    drawn = 0
    for i in order:
        if drawn >= sample_bytes and chosen:
            break
        chosen.add(files[i][0])
        drawn += files[i][1]
    return chosen


def check_shards(
    directory: Path,
    manifest: dict,
    verify: bool | str = True,
    sample_bytes: int = SAMPLE_BYTES,
    seed: int | None = None,
) -> None:
    """Every shard file of the manifest is present and of its size, and of its sha256: every one
    (``verify`` True or ``"full"``), a random sample (``"sample"``: :func:`sampled_shards`; the index
    files, small, always) or none (False). A flipped byte in a shard the sample leaves out passes this
    reuse; each reuse draws anew, and ``full`` catches it always."""
    sampled = sampled_shards(manifest, sample_bytes, seed) if verify == "sample" else set()
    for sp in manifest["splits"].values():
        for shard in sp["shards"]:
            for kind in ("hidden", "index"):
                name = shard[kind]["file"]
                hashed = verify in (True, "full") or (verify == "sample" and (kind == "index" or name in sampled))
                check_file(directory, name, shard[kind], hashed)
