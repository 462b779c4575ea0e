"""Shared fixtures: the real offline Qwen tokenizers (Qwen2/2.5/3 and Qwen3.5) and tiny seeded Qwen2 / Qwen3
checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Helpers shared by the tests (support/*.py) get pytest's assertion messages too.
pytest.register_assert_rewrite("support")

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from toptune.model.tiny import TinyQwenSpec, write_tiny_qwen  # noqa: E402
from toptune.model.tokenizer import build_qwen_tokenizer, load_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


SMALL = dict(num_layers=4, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16)


@pytest.fixture(scope="session")
def small_spec() -> dict:
    """The ``TinyQwenSpec`` fields of the tiny test checkpoints."""
    return dict(SMALL)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    return build_qwen_tokenizer(tmp_path_factory.mktemp("qwen-tokenizer"))


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def qwen3_5_tokenizer_dir(tmp_path_factory):
    """The Qwen3.5 / 3.6 / 3.8 tokenizer (248,044 ranks + 33 added tokens), built once per session."""
    return build_qwen_tokenizer(tmp_path_factory.mktemp("qwen3_5-tokenizer"), family="qwen3_5")


@pytest.fixture(scope="session")
def qwen3_5_tokenizer(qwen3_5_tokenizer_dir):
    return load_tokenizer(qwen3_5_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory, tokenizer_dir):
    return write_tiny_qwen(
        tmp_path_factory.mktemp("tiny-qwen3"), TinyQwenSpec(model_type="qwen3", **SMALL), tokenizer_dir
    )


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory, tokenizer_dir):
    return write_tiny_qwen(
        tmp_path_factory.mktemp("tiny-qwen2"), TinyQwenSpec(model_type="qwen2", **SMALL), tokenizer_dir
    )


@pytest.fixture(scope="session", params=["qwen3", pytest.param("qwen2", marks=pytest.mark.slow)])
def tiny_checkpoint(request, tiny_qwen3, tiny_qwen2):
    """Each test using it runs on a tiny Qwen3 and a tiny Qwen2 checkpoint (`make test-fast`: Qwen3 only;
    every other family is in tests/model/test_families.py)."""
    return {"qwen3": tiny_qwen3, "qwen2": tiny_qwen2}[request.param]


@pytest.fixture(scope="session")
def reference_run(tiny_qwen3, tmp_path_factory) -> tuple[Path, str]:
    """One uninterrupted ``kedro run`` (subprocess, cache mode, checkpoints every 2 steps) on the tiny Qwen3:
    the baseline of tests/train/test_ddp.py and tests/train/test_resume.py. Returns its project and the run's
    ``--params`` (without ``training.resume`` / ``training.checkpoint_every``, which do not change the steps)."""
    from support.kedro_proc import BIN, KEDRO_PARAMS, run
    from support.project import make_project

    params = f"{KEDRO_PARAMS},model.name_or_path={tiny_qwen3}"
    project = make_project(tmp_path_factory.mktemp("reference"))
    run([str(BIN / "kedro"), "run", "--params", f"{params},training.resume=never,training.checkpoint_every=2"], project)
    return project, params


@pytest.fixture(scope="session")
def data(tokenizer):
    """60 rows of the bundled table, encoded: train 36, val 12, test 12 (the cache tests' splits)."""
    import numpy as np
    import pandas as pd

    from support.classifiers import ID2LABEL
    from toptune.config import DataConfig
    from toptune.data.prepare import texts_table
    from toptune.data.tokens import encode

    table = texts_table(pd.read_csv(ROOT / "data" / "01_raw" / "reviews.csv").head(60), DataConfig())[0]
    label2id = {v: k for k, v in ID2LABEL.items()}
    enc = encode(table["text"].tolist(), tokenizer, 64, [label2id[x] for x in table["label"]], table["id"].tolist())

    def part(a, b):
        return enc.take(np.arange(a, b))

    return {"train": part(0, 36), "val": part(36, 48), "test": part(48, 60)}


@pytest.fixture
def plain_sgd(monkeypatch):
    """The library's AdamW replaced by plain SGD (same learning rates and schedule) while the test runs: for
    tests that compare the weights two equivalent training runs end with. SGD steps by ``lr·g``, so
    last-bit gradient differences stay last-bit weight differences; AdamW's step is about ``lr`` whatever
    ``g`` is, and turns a sign flip near zero into an lr-sized difference (see support/optim.py).
    Yields the optimisers it built: the test fails if the library built none (AdamW reached another way)."""
    import torch

    built: list[torch.optim.Optimizer] = []

    def sgd(params, lr: float, weight_decay: float = 0.0, **_adamw_only):
        built.append(torch.optim.SGD(params, lr=lr, weight_decay=weight_decay))
        return built[-1]

    monkeypatch.setattr(torch.optim, "AdamW", sgd)
    yield built
    assert built, "training built no optimiser through torch.optim.AdamW: plain_sgd did not take"
