"""What the benches run: the bench's model shapes, its configuration, and the inputs every run shares."""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from toptune.config import DataConfig, Device, Dtype, LoraSettings, ModelConfig, PrefixMode, TrainingConfig
from toptune.data.prepare import encode_table, texts_table
from toptune.data.tokens import Encoded
from toptune.model.tokenizer import load_tokenizer
from toptune.train.device import resolve_device

RUNS = ("hf_trainer", "hf_trainer_group_by_length", "autograd", "no_grad", "cache", "floor")
"""Every run of ``make bench``, in the order they run (``floor`` reuses the ``cache`` run's cache)."""

BENCH_SPEC = dict(
    hidden_size=256,
    intermediate_size=384,
    num_heads=8,
    num_kv_heads=4,
    head_dim=32,
    initializer_range=0.05,
    embedding_std=1.0,
)
"""The bench's tiny Qwen3 width. With the default tiny spec (width 128, init 0.1, embeddings 0.3)
3 epochs end mid-way through the jump from a ~0.52 plateau to ~1.0 test accuracy, at an epoch that
moves with the batch order, so two equally correct recipes differ by up to 45 points and the accuracy
comparison measures luck. At width 256 (init 0.05, embeddings 1.0, lr 1.5e-3, LoRA alpha 64) the
jump comes in epoch 1-2."""

QWEN3_4B_SHAPE = dict(
    num_layers=36,
    hidden_size=2560,
    intermediate_size=9728,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    initializer_range=0.02,
    embedding_std=0.02,
)
"""Qwen3-4B's shape (config.json of Qwen/Qwen3-4B); random weights, for time and memory only."""


def bench_training() -> TrainingConfig:
    """The recipe every run shares (``prefix_mode`` is set per run)."""
    return TrainingConfig(
        epochs=3,
        batch_size=16,
        eval_batch_size=64,
        lr=1.5e-3,
        warmup_ratio=0.06,
        max_grad_norm=1.0,
        max_length=128,
        seed=42,
        progress=False,
        log_every=10**9,
        cache_dir="data/04_feature/bench_prefix_cache",
    )


@dataclass
class GpuBenchConfig:
    """The Qwen3-4B-shaped bench that ``make bench`` adds on CUDA (a test runs it on the CPU, tiny)."""

    enabled: bool = True
    """Run it when ``device`` is available (``make bench`` on a machine without CUDA skips it)."""
    device: Device = "cuda"
    """Where it runs; ``cpu`` only for the test that runs the same code at a tiny shape."""
    spec: dict = field(default_factory=lambda: dict(QWEN3_4B_SHAPE))
    """``TinyQwenSpec`` fields of the random-weight checkpoint."""
    model_dir: str = "data/06_models/qwen3-4b-shape-random"
    """Where the checkpoint is written once, in bf16 (~8 GB for the 4B shape)."""
    trainable_layers: int = 4
    """K."""
    rows: int = 3000
    """Texts in the table (split 80/10/10); the knob that sets the bench's length (3,000: ~5 minutes on
    one H100 by a FLOP count at ~250 TFLOP/s, the checkpoint's first write included; unmeasured)."""
    max_length: int = 256
    """Tokens per text: every text is built longer and truncated, so each example has exactly this many."""
    reviews_per_text: int = 16
    """Bundled reviews (~20 tokens each) joined into one text: 16 give 287-371 tokens with the Qwen
    tokenizer (14 left 21 of 6,000 texts under 256)."""
    runs: tuple[str, ...] = ("hf_trainer", "no_grad", "cache")
    """Which runs (any of ``RUNS``)."""
    checkpoint: str | None = None
    """An existing checkpoint to bench instead of the random-weight shape (``spec`` and ``model_dir`` then
    unused): the pretrained ``qwen2`` of ``make pretrained`` (``data/06_models/smollm2-135m-qwen2``), on
    which test accuracy says whether the runs learn the same thing. None: the random Qwen3-4B shape."""


@dataclass
class BenchConfig:
    """What ``make bench`` runs (flags of ``python -m toptune.integrations.bench`` override fields)."""

    data_path: str = "data/01_raw/reviews.csv"
    """The bundled reviews table."""
    num_layers: int = 28
    """Blocks of the bench's tiny Qwen3 (28 = Qwen3-0.6B's depth)."""
    trainable_layers: int = 4
    """K: LoRA on the top K blocks."""
    spec: dict = field(default_factory=lambda: dict(BENCH_SPEC))
    """Other ``TinyQwenSpec`` fields of the tiny model (tests shrink it)."""
    model_dir: str | None = None
    """Where the seeded tiny Qwen3 is written once; None = ``data/06_models/tiny-qwen3-{L}l-bench``."""
    lora_alpha: int = 64
    """LoRA scale numerator (r = 8): alpha / r = 8."""
    training: TrainingConfig = field(default_factory=bench_training)
    """The shared recipe: epochs, batch size, lr, schedule, clipping, max_length, seed, device, cache_dir."""
    sample_rows: int | None = None
    """Use only N rows of the table (smoke tests); None = all 6000."""
    out_dir: str = "data/08_reporting"
    """Where ``bench.json`` and ``bench.png`` go."""
    runs: tuple[str, ...] = RUNS
    """Which runs, in order."""
    warm_up: bool = True
    """Run every run once on 64 examples first, unmeasured (first-call costs then fall on no measured run)."""
    gpu: GpuBenchConfig = field(default_factory=GpuBenchConfig)
    """The Qwen3-4B-shaped bench on CUDA."""
    profile: bool = True
    """After the timed runs, profile one build batch and one cached epoch (:mod:`toptune.bench.profile`):
    Chrome traces next to ``bench.json`` and the top operators in it (needs the ``cache`` run)."""

    def model_path(self) -> str:
        return self.model_dir or f"data/06_models/tiny-qwen3-{self.num_layers}l-bench"

    def train_cfg(self, mode: PrefixMode, **changes) -> TrainingConfig:
        """The shared recipe in prefix mode ``mode``."""
        return dataclasses.replace(self.training, prefix_mode=mode, **changes)


@dataclass
class Setup:
    """The shared inputs of every run of one bench."""

    model_path: str
    model_cfg: ModelConfig
    lora: LoraSettings
    data: dict[str, Encoded]
    id2label: dict[int, str]
    tokenizer: PreTrainedTokenizerBase
    device: torch.device


def device_name(device: torch.device) -> str:
    """``NVIDIA H100 …`` on CUDA; the CPU's model name and core count otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or "cpu"
    try:
        name = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return f"{name} ({len(os.sched_getaffinity(0))} cores, {torch.get_num_threads()} torch threads)"


TEXTS = DataConfig(text_template="{text}", label_column="label", id_column="id", drop_duplicates=False)
"""An already serialised table (``id``, ``text``, ``label``) through the data step as it is."""


def bench_table(bc: BenchConfig) -> pd.DataFrame:
    """The bundled table, validated and serialised with the default pipeline's template (``id``, ``text``,
    ``label``), as the data step's ``texts.parquet`` holds them."""
    return texts_table(pd.read_csv(bc.data_path), DataConfig(sample_rows=bc.sample_rows))[0]


def prepare_setup(bc: BenchConfig, model_path: str, table: pd.DataFrame | None = None, dtype: Dtype = "auto") -> Setup:
    """Split and tokenise ``table`` (``id``, ``text``, ``label``; default: the bundled one) once, into a
    token store beside the bench's cache, with the default pipeline's split and seed."""
    tok = load_tokenizer(model_path)
    root = Path(bc.training.cache_dir + "-tokens")
    if table is None:
        raw, cfg = pd.read_csv(bc.data_path), DataConfig(sample_rows=bc.sample_rows)
    else:
        raw, cfg = table, TEXTS
    data, id2label, _ = encode_table(raw, cfg, tok, bc.training.max_length, bc.training.seed, root)
    model_cfg = ModelConfig(name_or_path=model_path, trainable_layers=bc.trainable_layers, dtype=dtype)
    return Setup(
        model_path,
        model_cfg,
        LoraSettings(alpha=bc.lora_alpha),
        data,
        id2label,
        tok,
        resolve_device(bc.training.device),
    )


def config_dict(bc: BenchConfig, setup: Setup, spec: dict) -> dict:
    """What a bench ran with, flat enough for MLflow parameters."""
    tc = bc.training
    return {
        "model": spec,
        "model_path": setup.model_path,
        "num_layers": spec.get("num_layers"),
        "trainable_layers": bc.trainable_layers,
        "dtype": setup.model_cfg.dtype,
        "epochs": tc.epochs,
        "batch_size": tc.batch_size,
        "eval_batch_size": tc.eval_batch_size,
        "max_length": tc.max_length,
        "lr": tc.lr,
        "lora_alpha": bc.lora_alpha,
        "warmup_ratio": tc.warmup_ratio,
        "max_grad_norm": tc.max_grad_norm,
        "seed": tc.seed,
        "lora": dataclasses.asdict(setup.lora),
        "data": bc.data_path,
        "examples": {k: len(v) for k, v in setup.data.items()},
        "tokens": {k: int(v.lengths().sum()) for k, v in setup.data.items()},
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
