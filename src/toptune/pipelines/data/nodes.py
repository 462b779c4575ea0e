"""Nodes of the ``data`` pipeline."""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import tempfile
from pathlib import Path

from toptune.config import DataConfig, ModelConfig, TrainingConfig
from toptune.data.prepare import Prepared, prepare_store
from toptune.io.atomic import staging_dir
from toptune.model.tokenizer import load_tokenizer
from toptune.pipelines.utils import metric_items
from toptune.train import distributed
from toptune.train.recipe import resolve_base_checkpoint

log = logging.getLogger(__name__)

TOKENISED = Path("data/04_feature/tokenised")
"""Where the token store is staged (beside the ``tokenised`` catalog entry, which swaps it into place)."""


def private_dir() -> Path:
    """Where a process other than rank 0 keeps its own token store (under ``torchrun`` every process runs
    the data step, and only rank 0 writes into the project): a temporary directory, removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="toptune-tokens-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root / "store" / TOKENISED.name


def prepare(
    raw_data, data: DataConfig, model: ModelConfig, training: TrainingConfig
) -> tuple[Prepared, dict[str, str], dict, list[dict], dict]:
    """Stream the raw table into the token store: validated, serialised, tokenised (cut at
    ``training.max_length``), split (seed ``data.split_seed``, else ``training.seed``). Returns the
    store, the label map, the row counts (every drop under ``dropped_<reason>``), a few valid raw rows
    (the model bundle's examples) and the split sizes."""
    tokenizer = load_tokenizer(resolve_base_checkpoint(model.name_or_path))
    staged = staging_dir(TOKENISED) if distributed.is_main() else private_dir()
    shutil.rmtree(staged.parent, ignore_errors=True)
    staged.parent.mkdir(parents=True)
    seed = training.seed if data.split_seed is None else data.split_seed
    prepared = prepare_store(raw_data, data, tokenizer, training.max_length, seed, staged, progress=True)
    q = prepared.quality
    dropped = {k: v for k, v in q.items() if k.startswith("dropped_") and v}
    log.info("data: %d rows in, %d valid; dropped %s", q["rows_in"], q["rows_valid"], dropped or "none")
    stats = {f"{name}_examples": e["rows"] for name, e in prepared.entries.items()}
    stats.update({f"{name}_truncated": e["truncated"] for name, e in prepared.entries.items()})
    log.info("tokenised: %s", stats)
    examples = json.loads(prepared.examples.to_json(orient="records"))  # plain JSON types
    label_map = {str(k): v for k, v in prepared.id2label.items()}
    return prepared, label_map, metric_items(q), examples, metric_items(stats)
