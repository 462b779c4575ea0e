"""The Qwen3-4B-shaped bench that ``make bench`` adds on CUDA: random bf16 weights written once, texts of
exactly ``max_length`` tokens, HF Trainer + PEFT in bf16 against toptune's runs, the same batch.

The bundled reviews are ~20 tokens; a sequence length of 256 needs longer texts. Each text here is
``reviews_per_text`` consecutive bundled reviews joined by blank lines (a window sliding by one review,
so up to 6,000 distinct texts), labelled as its first review, truncated to ``max_length`` tokens: every
example is exactly ``max_length`` long, so no run gains from padding. The weights are random, so test
accuracy means nothing here; time and device memory do.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from toptune.bench.config import (
    BenchConfig,
    bench_table,
    config_dict,
    device_name,
    prepare_setup,
)
from toptune.bench.profile import profile_cache
from toptune.bench.report import speedups
from toptune.bench.runs import bench_classifier, run_all, warm_up
from toptune.model.tiny import TinyQwenSpec, tiny_config
from toptune.model.tokenizer import ensure_qwen_tokenizer
from toptune.train.device import resolve_device


def ensure_gpu_model(model_dir: str | Path, spec: dict, device: str) -> Path:
    """Write the random-weight checkpoint of shape ``spec`` once, in bf16, initialised on ``device``
    (Qwen3-4B: ~8 GB, seconds on a GPU). A marker written last names the spec of a complete checkpoint."""
    out, tiny = Path(model_dir), TinyQwenSpec(**spec)
    marker = out / "toptune_spec.json"
    if marker.is_file() and json.loads(marker.read_text()) == {**tiny.__dict__, "dtype": "bfloat16"}:
        return out
    torch.manual_seed(tiny.seed)
    with torch.device(resolve_device(device)):
        model = AutoModelForCausalLM.from_config(tiny_config(tiny), dtype=torch.bfloat16)
    model.save_pretrained(out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    ensure_qwen_tokenizer(out)
    marker.write_text(json.dumps({**tiny.__dict__, "dtype": "bfloat16"}, indent=1))
    return out


def joined_reviews(table: pd.DataFrame, rows: int, per_text: int) -> pd.DataFrame:
    """``rows`` texts, text ``i`` = reviews ``i … i+per_text-1`` of ``table`` (cycling) joined by a blank
    line, labelled as review ``i``; ids ``long000000`` …"""
    texts, labels, n = table["text"].tolist(), table["label"].tolist(), len(table)
    return pd.DataFrame(
        {
            "id": [f"long{i:06d}" for i in range(rows)],
            "text": ["\n\n".join(texts[(i + j) % n] for j in range(per_text)) for i in range(rows)],
            "label": [labels[i % n] for i in range(rows)],
        }
    )


def gpu_bench_config(bc: BenchConfig) -> BenchConfig:
    """``bc`` with the GPU bench's K, sequence length, device and cache directory."""
    g = bc.gpu
    training = dataclasses.replace(
        bc.training, max_length=g.max_length, device=g.device, cache_dir=bc.training.cache_dir + "-4b"
    )
    return dataclasses.replace(bc, trainable_layers=g.trainable_layers, training=training, sample_rows=None)


def run_gpu_bench(bc: BenchConfig) -> dict:
    """``{"config", "device", "runs", "speedups"}`` of the Qwen3-4B-shaped bench (runs ``bc.gpu.runs``), or
    of ``bc.gpu.checkpoint`` in its place."""
    g, gbc = bc.gpu, gpu_bench_config(bc)
    path = Path(g.checkpoint) if g.checkpoint else ensure_gpu_model(g.model_dir, g.spec, g.device)
    spec = {"checkpoint": g.checkpoint} if g.checkpoint else g.spec
    table = joined_reviews(bench_table(bc), g.rows, g.reviews_per_text)
    setup = prepare_setup(gbc, str(path), table, dtype="bfloat16")
    if bc.warm_up:
        warm_up(setup, gbc, g.runs)
    runs = run_all(setup, gbc, g.runs)
    lengths = setup.data["train"].lengths()
    profiled = (
        {"profile": profile_cache(setup, gbc, bench_classifier(setup, gbc), Path(bc.out_dir) / "gpu_4b")}
        if bc.profile and "cache" in g.runs
        else {}
    )
    return {
        "config": {
            **config_dict(gbc, setup, spec),
            "rows": g.rows,
            "reviews_per_text": g.reviews_per_text,
            "tokens_per_example_min": int(lengths.min()),
            "tokens_per_example_max": int(lengths.max()),
        },
        "device": device_name(setup.device),
        "runs": runs,
        "speedups": speedups(runs),
        **profiled,
    }
