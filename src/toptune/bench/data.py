"""``make bench-data``: the data step (read, validate, serialise, split, tokenise, store) as rows grow —
peak anonymous memory, seconds per row, bytes on disk.

Each point runs :func:`toptune.data.prepare.prepare_store` — what the ``data`` pipeline's node runs — on a
CSV file in a fresh Python process (its own peak memory, its own allocator), reading the file as the
default catalog's ``raw_data`` does (:class:`toptune.data.read.TableFile`, streamed). The table is the
bundled one repeated with fresh ids (``r00042.3`` = row ``r00042``, copy 3), as ``make bench-scale``
does, with ``data.drop_duplicates`` off (every copy would otherwise be a duplicate): each size has the
same texts per row, hence the same work per row. The CSV is written before the point's process starts
and is not counted. Peak ``RssAnon`` is sampled every 10 ms (:class:`toptune.bench.rss.RssSampler`)
from before the tokenizer loads to the end.

With ``--cached-epoch``, the largest store then feeds a cache build and one cached epoch of the
embedded default model (8 blocks, width 128, K=3), timed.

Writes ``data/08_reporting/bench_data.json``: ``{"runs": [{"rows", "rows_valid", "tokens",
"peak_anon_rss_bytes", "seconds", "stored_bytes", …}, …], "summary", "config", "machine"}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from toptune.bench.config import bench_training, device_name
from toptune.bench.fresh import child_main, is_child, run_fresh
from toptune.bench.rss import RssSampler, rss_anon_bytes
from toptune.config import DEFAULT_MODEL_PATH

DATA_JSON = "bench_data.json"


@dataclass
class DataBenchConfig:
    """What ``make bench-data`` runs (flags of ``python -m toptune.integrations.bench_data`` override fields)."""

    data_path: str = "data/01_raw/reviews.csv"
    """The bundled reviews table (6000 rows)."""
    rows: tuple[int, ...] = (62_500, 1_000_000)
    """Table sizes to run (the bundled rows repeated, the last copy cut)."""
    max_length: int = 128
    """``training.max_length``."""
    work_dir: str = "data/04_feature/bench_data"
    """Where each point's CSV and token store go (removed after the point, the largest store after the epoch)."""
    model_dir: str = DEFAULT_MODEL_PATH
    """The tokenizer (and, with ``cached_epoch``, the model): the embedded default (8 blocks, width 128)."""
    cached_epoch: bool = False
    """Also build the prefix cache over the largest store and train one cached epoch on it (timed)."""
    out_dir: str = "data/08_reporting"
    """Where ``bench_data.json`` goes."""


def write_table(source: str, rows: int, path: Path) -> None:
    """``rows`` rows of the table at ``source`` repeated with fresh ids, written copy by copy."""
    base = pd.read_csv(source)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for copy in range((rows + len(base) - 1) // len(base)):
            part = base.head(rows - copy * len(base)).assign(id=base["id"].astype(str) + f".{copy}")
            part.to_csv(f, index=False, header=copy == 0)


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def measure_point(cfg: DataBenchConfig, csv: Path, store: Path) -> dict:
    """The data step on ``csv`` into ``store``, in this process: figures as a flat dict."""
    with RssSampler() as rss:
        start_bytes = rss_anon_bytes()
        t = time.perf_counter()
        from toptune.config import DataConfig  # timed: what a fresh data step imports
        from toptune.data.prepare import prepare_store
        from toptune.data.read import open_table
        from toptune.model.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(cfg.model_dir)
        prepared = prepare_store(
            open_table(csv), DataConfig(drop_duplicates=False), tokenizer, cfg.max_length, 42, store
        )
        seconds = time.perf_counter() - t
    q = prepared.quality
    return {
        "rows": q["rows_in"],
        "rows_valid": q["rows_valid"],
        "tokens": sum(e["tokens"] for e in prepared.entries.values()),
        "peak_anon_rss_bytes": rss.peak_bytes,
        "start_anon_rss_bytes": start_bytes,
        "seconds": seconds,
        "stored_bytes": tree_bytes(store),
        "table_bytes": csv.stat().st_size,
        "examples": {k: e["rows"] for k, e in prepared.entries.items()},
    }


def run_point(cfg: DataBenchConfig, csv: Path, store: Path) -> dict:
    job = {"config": dataclasses.asdict(cfg), "csv": str(csv), "store": str(store)}
    return run_fresh("toptune.bench.data", job, f"bench-data point {csv.name}")


def _measure_job(job: dict) -> dict:
    cfg = DataBenchConfig(**{**job["config"], "rows": tuple(job["config"]["rows"])})
    return measure_point(cfg, Path(job["csv"]), Path(job["store"]))


def cached_epoch(cfg: DataBenchConfig, store: Path) -> dict:
    """The prefix cache built over ``store`` and one cached epoch trained on it, timed."""
    from toptune.bench.timing import timed
    from toptune.cache import fit_cached, prepare_cache
    from toptune.config import LoraSettings, ModelConfig
    from toptune.data.store import read_store
    from toptune.train.recipe import build_classifier, resolve_base_checkpoint

    data = read_store(store)
    training = dataclasses.replace(bench_training(), epochs=1, cache_dir=f"{cfg.work_dir}/cache", progress=True)
    id2label = {0: "negative", 1: "neutral", 2: "positive"}
    model = ModelConfig(name_or_path=resolve_base_checkpoint(cfg.model_dir), trainable_layers=3)
    clf = build_classifier(model, LoraSettings(alpha=64), id2label, training.seed, training.device)
    try:
        with RssSampler() as build_rss, timed(clf.device) as build:
            cache = prepare_cache(clf, data, training, rebuild=True)
        with RssSampler() as epoch_rss, timed(clf.device) as fit:
            fit_cached(clf, data, training, cache=cache)
        cache_bytes = cache.bytes
    finally:
        shutil.rmtree(training.cache_dir, ignore_errors=True)
    return {
        "rows": sum(len(v) for v in data.values()),
        "cache_bytes": cache_bytes,
        "build_seconds": build.seconds,
        "epoch_seconds": fit.seconds,
        "build_peak_anon_rss_bytes": build_rss.peak_bytes,
        "epoch_peak_anon_rss_bytes": epoch_rss.peak_bytes,
        "machine": device_name(clf.device),
    }


def summary(runs: list[dict]) -> dict[str, float]:
    lo, hi = min(runs, key=lambda r: r["rows"]), max(runs, key=lambda r: r["rows"])
    if hi["rows"] == lo["rows"]:  # one size: nothing grows
        return {"rows_ratio": 1.0, "stored_bytes_per_token": hi["stored_bytes"] / max(hi["tokens"], 1)}
    return {
        "rows_ratio": hi["rows"] / lo["rows"],
        "peak_anon_rss_ratio": hi["peak_anon_rss_bytes"] / lo["peak_anon_rss_bytes"],
        "anon_rss_bytes_per_extra_row": (hi["peak_anon_rss_bytes"] - lo["peak_anon_rss_bytes"])
        / (hi["rows"] - lo["rows"]),
        "seconds_per_row_ratio": (hi["seconds"] / hi["rows"]) / (lo["seconds"] / lo["rows"]),
        "stored_bytes_per_token": hi["stored_bytes"] / max(hi["tokens"], 1),
    }


def run_data_bench(cfg: DataBenchConfig, log=print) -> dict:
    """Every size in its own process, smallest first; writes ``bench_data.json``."""
    from toptune.train.recipe import resolve_base_checkpoint

    resolve_base_checkpoint(cfg.model_dir)  # the embedded default is written on first use, with its tokenizer
    work, runs, largest = Path(cfg.work_dir), [], None
    shutil.rmtree(work, ignore_errors=True)
    for rows in sorted(cfg.rows):
        csv, store = work / f"reviews-{rows}.csv", work / f"store-{rows}"
        write_table(cfg.data_path, rows, csv)
        r = run_point(cfg, csv, store)
        csv.unlink()
        log(
            f"bench-data: {r['rows']:,} rows ({r['tokens']:,} tokens): peak anon RSS "
            f"{r['peak_anon_rss_bytes'] / 2**20:.0f} MiB, {r['seconds']:.1f} s, "
            f"store {r['stored_bytes'] / 2**20:.0f} MiB"
        )
        runs.append(r)
        if largest is not None:
            shutil.rmtree(largest, ignore_errors=True)
        largest = store
    result = {"runs": runs, "summary": summary(runs), "config": dataclasses.asdict(cfg), "machine": device_name_cpu()}
    if cfg.cached_epoch and largest is not None:
        result["cached_epoch"] = cached_epoch(cfg, largest)
        log(f"bench-data: cache build and one cached epoch over {largest}: {result['cached_epoch']}")
    shutil.rmtree(work, ignore_errors=True)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / DATA_JSON).write_text(json.dumps(result, indent=1))
    return result


def device_name_cpu() -> str:
    import torch

    return device_name(torch.device("cpu"))


def parse_args(argv: list[str] | None = None) -> DataBenchConfig:
    cfg = DataBenchConfig()
    p = argparse.ArgumentParser(prog="python -m toptune.integrations.bench_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=",".join(map(str, cfg.rows)), help="table sizes, comma-separated")
    p.add_argument("--max-length", type=int, default=cfg.max_length)
    p.add_argument("--cached-epoch", action="store_true", help="also a cache build + one cached epoch on the largest")
    p.add_argument("--out-dir", default=cfg.out_dir)
    a = p.parse_args(argv)
    rows = tuple(int(x) for x in a.rows.split(",") if x)
    return dataclasses.replace(cfg, rows=rows, max_length=a.max_length, cached_epoch=a.cached_epoch, out_dir=a.out_dir)


def main(argv: list[str] | None = None, cfg: DataBenchConfig | None = None) -> dict:
    result = run_data_bench(cfg or parse_args(argv))
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {Path(result['config']['out_dir']) / DATA_JSON}")
    return result


if __name__ == "__main__":
    child_main(sys.argv[1:], _measure_job) if is_child(sys.argv) else main()
