"""``make bench-scale``: the cached path on one model as the rows grow — host memory, seconds per row.

Each point (a model shape × a multiple of the base rows) trains one epoch of ``prefix_mode: cache``
from scratch in a fresh Python process, so one size's peak memory (and allocator state) never
carries into the next. The rows are the bundled table (its first ``base_rows``) repeated ``m``
times with fresh ids (``r00042.3`` = row ``r00042``, copy 3), ``data.drop_duplicates`` off: every
size has the same token-length distribution, hence the same work per row, which is what a
per-row cost comparison needs (identical texts cost the same as distinct ones: the cache stores per
example and never deduplicates). Per point it records the cache's bytes, the build's and the
epoch's wall seconds, and the peak ``RssAnon`` (:class:`toptune.bench.rss.RssSampler`, every
10 ms) while building and while training.

Writes ``data/08_reporting/bench_scale.json``: ``{"runs": [{"rows", "num_layers", "cache_bytes",
"peak_anon_rss_bytes", "build_seconds", "epoch_seconds", …}, …], "summary", "config", "machine"}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from transformers import set_seed

from toptune.bench.config import BENCH_SPEC, bench_training, device_name
from toptune.bench.fresh import child_main, is_child, run_fresh
from toptune.bench.rss import RssSampler
from toptune.bench.timing import timed
from toptune.cache import fit_cached, prepare_cache
from toptune.config import DataConfig, LoraSettings, ModelConfig
from toptune.data.prepare import encode_table
from toptune.model.tiny import TinyQwenSpec, ensure_tiny_qwen
from toptune.model.tokenizer import load_tokenizer
from toptune.train.recipe import build_classifier

SCALE_JSON = "bench_scale.json"


@dataclass(frozen=True)
class Shape:
    """One model shape of the scale bench and the row multiples it runs at."""

    num_layers: int
    """Blocks of the tiny Qwen3 (width from ``ScaleConfig.spec``)."""
    trainable_layers: int
    """K."""
    multiples: tuple[int, ...]
    """Multiples of ``ScaleConfig.base_rows`` to run."""


@dataclass
class ScaleConfig:
    """What ``make bench-scale`` runs (flags of ``python -m toptune.integrations.bench_scale`` override fields)."""

    data_path: str = "data/01_raw/reviews.csv"
    """The bundled reviews table."""
    base_rows: int = 6000
    """Rows at 1x (the first N of the table; the bundled table has 6000)."""
    shapes: tuple[Shape, ...] = (Shape(12, 3, (1, 4, 16)), Shape(28, 4, (1,)))
    """Today's 12-block bench model at 1x, 4x, 16x; Qwen3-0.6B's depth (28 blocks, K=4) at 1x."""
    spec: dict = field(default_factory=lambda: dict(BENCH_SPEC))
    """Width and init of the tiny Qwen3 (``TinyQwenSpec`` fields but ``num_layers``)."""
    model_root: str = "data/06_models"
    """Checkpoints go to ``{model_root}/tiny-qwen3-{L}l-bench`` (the ones ``make bench`` uses)."""
    training: dict = field(default_factory=lambda: {"epochs": 1, "cache_dir": "data/04_feature/bench_scale_cache"})
    """``TrainingConfig`` fields over the bench's recipe (1 epoch; the cache directory, removed after each point)."""
    out_dir: str = "data/08_reporting"
    """Where ``bench_scale.json`` goes."""


def model_dir(sc: ScaleConfig, num_layers: int) -> str:
    return f"{sc.model_root}/tiny-qwen3-{num_layers}l-bench"


def repeated_table(raw: pd.DataFrame, base_rows: int, multiple: int) -> pd.DataFrame:
    """The first ``base_rows`` rows of ``raw``, ``multiple`` times, ids suffixed ``.0`` … ``.{m-1}``."""
    base = raw.head(base_rows)
    copies = [base.assign(id=base["id"].astype(str) + f".{c}") for c in range(multiple)]
    return pd.concat(copies, ignore_index=True)


def measure_point(sc: ScaleConfig, shape: Shape, multiple: int) -> dict:
    """One point, in this process: tokenise, build the cache, train one epoch; the figures as a flat dict."""
    cfg = dataclasses.replace(bench_training(), **sc.training)
    cfg = dataclasses.replace(cfg, cache_dir=f"{cfg.cache_dir}/{shape.num_layers}l-x{multiple}")
    path = model_dir(sc, shape.num_layers)
    tok = load_tokenizer(path)
    raw = repeated_table(pd.read_csv(sc.data_path), sc.base_rows, multiple)
    tokens = Path(f"{cfg.cache_dir}-tokens")
    data, id2label, quality = encode_table(
        raw, DataConfig(drop_duplicates=False), tok, cfg.max_length, cfg.seed, tokens
    )
    rows = quality["rows_valid"]
    del raw
    set_seed(cfg.seed)
    clf = build_classifier(
        ModelConfig(name_or_path=path, trainable_layers=shape.trainable_layers),
        LoraSettings(alpha=64),
        id2label,
        cfg.seed,
        cfg.device,
        tokenizer=tok,
    )
    shutil.rmtree(cfg.cache_dir, ignore_errors=True)
    gc.collect()
    try:
        with RssSampler() as build_rss, timed(clf.device) as build:
            cache = prepare_cache(clf, data, cfg, rebuild=True)
        with RssSampler() as epoch_rss, timed(clf.device) as fit:
            result = fit_cached(clf, data, cfg, cache=cache)
        cache_bytes, cache_build_seconds = cache.bytes, cache.build_seconds
        del cache
    finally:
        shutil.rmtree(cfg.cache_dir, ignore_errors=True)
        shutil.rmtree(tokens, ignore_errors=True)  # its memory maps stay readable until dropped
    width = clf.model.config.hidden_size
    return {
        "rows": rows,
        "multiple": multiple,
        "num_layers": shape.num_layers,
        "trainable_layers": shape.trainable_layers,
        "hidden_size": width,
        "examples": {k: len(v) for k, v in data.items()},
        "tokens": sum(int(v.lengths().sum()) for v in data.values()),
        "cache_bytes": cache_bytes,
        "dtype": str(next(clf.model.parameters()).dtype).removeprefix("torch."),
        "peak_anon_rss_bytes": max(build_rss.peak_bytes, epoch_rss.peak_bytes),
        **build_rss.as_dict("build_"),
        **epoch_rss.as_dict("epoch_"),
        "build_seconds": build.seconds,
        "cache_build_seconds": cache_build_seconds,
        "epoch_seconds": result.epochs[0]["epoch_seconds"],
        "fit_seconds": fit.seconds,
        "machine": device_name(clf.device),
        "torch": torch.__version__,
    }


def summary(runs: list[dict]) -> dict[str, float]:
    """What grows how much from the smallest to the largest point of the shallowest shape: rows,
    cache bytes, peak anonymous RSS, seconds per row (build and epoch)."""
    depth = min(r["num_layers"] for r in runs)
    base = [r for r in runs if r["num_layers"] == depth]
    lo, hi = min(base, key=lambda r: r["rows"]), max(base, key=lambda r: r["rows"])
    per_row = lambda r, k: r[k] / r["rows"]  # noqa: E731
    return {
        "num_layers": depth,
        "rows_ratio": hi["rows"] / lo["rows"],
        "cache_bytes_ratio": hi["cache_bytes"] / lo["cache_bytes"],
        "peak_anon_rss_ratio": hi["peak_anon_rss_bytes"] / lo["peak_anon_rss_bytes"],
        "build_seconds_per_row_ratio": per_row(hi, "build_seconds") / per_row(lo, "build_seconds"),
        "epoch_seconds_per_row_ratio": per_row(hi, "epoch_seconds") / per_row(lo, "epoch_seconds"),
        "largest_cache_bytes": hi["cache_bytes"],
    }


def run_point_subprocess(sc: ScaleConfig, shape: Shape, multiple: int) -> dict:
    """:func:`measure_point` in a fresh Python process (its own peak memory, its own allocator)."""
    job = {"config": dataclasses.asdict(sc), "shape": dataclasses.asdict(shape), "multiple": multiple}
    return run_fresh("toptune.bench.scale", job, f"bench-scale point {shape.num_layers} blocks x{multiple}")


def config_from_dict(d: dict) -> ScaleConfig:
    return ScaleConfig(
        **{**d, "shapes": tuple(Shape(**{**s, "multiples": tuple(s["multiples"])}) for s in d["shapes"])}
    )


def run_scale(sc: ScaleConfig, log=print) -> dict:
    """Every point of every shape, each in its own process, smallest first; writes ``bench_scale.json``."""
    runs = []
    for shape in sc.shapes:
        ensure_tiny_qwen(model_dir(sc, shape.num_layers), TinyQwenSpec(num_layers=shape.num_layers, **sc.spec))
        for m in sorted(shape.multiples):
            r = run_point_subprocess(sc, shape, m)
            log(
                f"bench-scale: {r['num_layers']} blocks, {r['rows']} rows: cache {r['cache_bytes'] / 2**20:.0f} MiB, "
                f"peak anon RSS {r['peak_anon_rss_bytes'] / 2**20:.0f} MiB, build {r['build_seconds']:.1f} s, "
                f"epoch {r['epoch_seconds']:.1f} s"
            )
            runs.append(r)
    result = {"runs": runs, "summary": summary(runs), "config": dataclasses.asdict(sc), "machine": runs[0]["machine"]}
    out = Path(sc.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SCALE_JSON).write_text(json.dumps(result, indent=1))
    return result


def parse_args(argv: list[str] | None = None) -> ScaleConfig:
    sc = ScaleConfig()
    p = argparse.ArgumentParser(prog="python -m toptune.integrations.bench_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-rows", type=int, default=sc.base_rows, help="rows at 1x (first N of the bundled table)")
    p.add_argument("--multiples", default=",".join(map(str, sc.shapes[0].multiples)), help="of the 12-block model")
    p.add_argument(
        "--deep-multiples",
        default=",".join(map(str, sc.shapes[1].multiples)),
        help="of the 28-block model (empty: skip it)",
    )
    p.add_argument("--out-dir", default=sc.out_dir)
    a = p.parse_args(argv)
    ints = lambda s: tuple(int(x) for x in s.split(",") if x)  # noqa: E731
    shapes = (
        dataclasses.replace(sc.shapes[0], multiples=ints(a.multiples)),
        dataclasses.replace(sc.shapes[1], multiples=ints(a.deep_multiples)),
    )
    return dataclasses.replace(
        sc, base_rows=a.base_rows, shapes=tuple(s for s in shapes if s.multiples), out_dir=a.out_dir
    )


def main(argv: list[str] | None = None, sc: ScaleConfig | None = None) -> dict:
    """Run the scale bench (``sc``, else from ``argv``), write ``bench_scale.json``, print the summary."""
    result = run_scale(sc or parse_args(argv))
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {Path(result['config']['out_dir']) / SCALE_JSON}")
    return result


def _measure_job(job: dict) -> dict:
    shape = Shape(**{**job["shape"], "multiples": tuple(job["shape"]["multiples"])})
    return measure_point(config_from_dict(job["config"]), shape, job["multiple"])


if __name__ == "__main__":
    child_main(sys.argv[1:], _measure_job) if is_child(sys.argv) else main()
