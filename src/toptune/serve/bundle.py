"""One model, one bundle: the files that define a trained model travel in its directory.

A bundle is a model directory (the PEFT adapter, ``data/06_models/adapter/``, or the merged model,
``data/06_models/merged/``) plus ``toptune.json``: the label map, the text template and columns, the
token limit, the base checkpoint (name, model type, a hash of its weights), a hash of the tokenizer
files, the trainable blocks, a hash of the bundle's own weights and the MLflow run that trained it;
and ``examples.json``, a few valid rows of the training table (export's merge check and the served
model's input example). Export, predict and serve read only the bundle; :func:`read_bundle` refuses,
in one line, a bundle whose parts disagree.

A training run writes its bundle to a staging directory (:func:`toptune.io.atomic.staging_dir`) and
:func:`toptune.io.atomic.swap_dir` swaps it in only when the run succeeds, so a failed or killed run
leaves the previous bundle whole. The hashes are :func:`toptune.io.hashing.files_sha256`'s.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from safetensors import safe_open

from toptune.errors import BundleError
from toptune.io.hashing import files_sha256
from toptune.task import SINGLE, Task

BUNDLE_FILE = "toptune.json"
"""The bundle's manifest, beside the weights."""
EXAMPLES_FILE = "examples.json"
"""Valid rows of the training table (id and template columns), as JSON records."""
BUNDLE_FORMAT = 1
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
"""Files that define a tokenizer (with any ``*.tiktoken``): their hash is the tokenizer's identity."""


@dataclass
class Bundle:
    """``toptune.json``: what defines a trained model."""

    kind: str
    """``adapter`` (PEFT adapter over the base checkpoint) or ``merged`` (a plain transformers checkpoint)."""
    id2label: dict[int, str]
    """Class index → label, as trained."""
    text_template: str
    """``data.text_template`` the model was trained with."""
    max_length: int
    """``training.max_length``: texts are cut to this many tokens."""
    id_column: str | None
    """``data.id_column``: identifies a row in predictions."""
    label_column: str | None
    """``data.label_column`` of the training table (ignored in tables to classify)."""
    base_model: str
    """``model.name_or_path`` the adapter was trained on (a hub id or a local directory)."""
    base_model_type: str
    """``model_type`` of the base checkpoint's ``config.json``."""
    base_weights_sha256: str
    """Hash of the base checkpoint's safetensors files (see :func:`weights_sha256`)."""
    tokenizer_sha256: str
    """Hash of the tokenizer files that ship with this bundle (the base's, for an adapter)."""
    trainable_layers: list[int]
    """Block indices that carry LoRA."""
    missing_fields: str = "drop"
    """``data.missing_fields``: how a blank template cell renders (a bundle without the key: ``drop``)."""
    problem_type: str = SINGLE
    """``data.problem_type`` (a bundle without the key: single-label); the fields below are
    :class:`toptune.task.Task`'s, documented there."""
    label_separator: str = ";"
    class_weights: list[float] | None = None
    target_mean: float = 0.0
    target_std: float = 1.0
    temperature: float = 1.0
    thresholds: list[float] | None = None
    weights_sha256: str = ""
    """Hash of this bundle's own weights (adapter or merged safetensors); set by :func:`write_bundle`."""
    mlflow_run_id: str | None = None
    """The MLflow run that trained the model."""
    format: int = BUNDLE_FORMAT
    extra: dict = field(default_factory=dict)
    """Free-form facts (``merged_from``: the adapter's weights hash, …)."""


TASK_FIELDS = tuple(f.name for f in dataclasses.fields(Task) if f.name != "id2label")
"""The :class:`toptune.task.Task` fields a bundle records besides ``id2label`` (each one a :class:`Bundle` field)."""


def task_fields(task: Task) -> dict:
    """``task`` as :class:`Bundle` keyword arguments (``id2label`` apart)."""
    return {k: getattr(task, k) for k in TASK_FIELDS}


def bundle_task(bundle: Bundle) -> Task:
    """The task a bundle's model answers."""
    return Task(id2label=dict(bundle.id2label), **{k: getattr(bundle, k) for k in TASK_FIELDS})


def trainable_blocks(adapter_config: dict) -> list[int]:
    """The blocks an adapter config puts LoRA on: toptune names every target in full (``model.layers.5.…``)."""
    names = list(adapter_config.get("target_modules") or []) + list(adapter_config.get("target_parameters") or [])
    return sorted({int(m.group(1)) for n in names if (m := re.search(r"(?:^|\.)layers\.(\d+)\.", n))})


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors weights of a checkpoint directory; pickle weights (``*.bin``, ``*.pt``) alone are refused."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        why = f"only pickle weights ({', '.join(pickles)}), which toptune never loads" if pickles else "no weights"
        raise BundleError(f"{model_dir} has {why}: it needs *.safetensors files")
    return files


def weights_sha256(model_dir: str | Path) -> str:
    """Hash of a checkpoint's safetensors files (reads them whole: about a second per GB)."""
    return files_sha256(weight_files(Path(model_dir)))


def tokenizer_sha256(model_dir: str | Path) -> str:
    """Hash of the tokenizer files in ``model_dir``."""
    d = Path(model_dir)
    files = [d / n for n in TOKENIZER_FILES if (d / n).is_file()] + sorted(d.glob("*.tiktoken"))
    if not files:
        raise BundleError(f"{d} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])})")
    return files_sha256(files)


def base_checkpoint_dir(name_or_path: str) -> Path | None:
    """The local directory of a base checkpoint: the path itself, or a hub id's snapshot in the local
    Hugging Face cache; None when neither is on disk."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    try:
        from huggingface_hub import snapshot_download  # heavy: 0.35 s, and most callers pass a local path

        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception:  # noqa: BLE001 - not a hub id, or not in the cache
        return None


def read_config(model_dir: Path) -> dict:
    """A checkpoint's ``config.json``, read (not loaded); a composite config's text part when it has one."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise BundleError(f"{model_dir} has no config.json: not a transformers checkpoint")
    cfg = json.loads(path.read_text())
    return {**cfg, **cfg["text_config"]} if isinstance(cfg.get("text_config"), dict) else cfg


def base_identity(name_or_path: str, resolved: str | Path) -> dict:
    """The ``base_*`` and ``tokenizer_sha256`` fields of a bundle trained on ``resolved`` (the local
    directory of ``name_or_path``)."""
    d = base_checkpoint_dir(str(resolved))
    if d is None:
        raise BundleError(f"model.name_or_path={name_or_path}: no local copy to hash")
    return {
        "base_model": name_or_path,
        "base_model_type": str(read_config(d).get("model_type", "")),
        "base_weights_sha256": weights_sha256(d),
        "tokenizer_sha256": tokenizer_sha256(d),
    }


def _score_rows(weights: Path) -> int | None:
    """Rows of the classification head in a safetensors file (header only), or None if it has none."""
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            if "score" in key and key.endswith("weight"):
                return int(f.get_slice(key).get_shape()[0])
    return None


def write_bundle(out_dir: str | Path, bundle: Bundle, examples: pd.DataFrame | None = None) -> Bundle:
    """Write ``toptune.json`` (with the hash of the weights already in ``out_dir``) and ``examples.json``."""
    out = Path(out_dir)
    own = [out / ADAPTER_WEIGHTS] if bundle.kind == "adapter" else weight_files(out)
    bundle = dataclasses.replace(bundle, weights_sha256=files_sha256(own))
    if bundle.kind == "merged":
        bundle.tokenizer_sha256 = tokenizer_sha256(out)
    (out / BUNDLE_FILE).write_text(json.dumps(dataclasses.asdict(bundle), indent=1))
    rows = json.loads(examples.to_json(orient="records")) if examples is not None else []
    (out / EXAMPLES_FILE).write_text(json.dumps(rows, indent=1))
    return bundle


def read_bundle(model_dir: str | Path, kind: str) -> Bundle:
    """Read and check a bundle; :class:`BundleError` names the first part that disagrees."""
    d = Path(model_dir)
    path = d / BUNDLE_FILE
    if not path.is_file():
        what = "an adapter" if kind == "adapter" else "a merged checkpoint"
        raise BundleError(
            f"{d} is not {what} bundle ({BUNDLE_FILE} is missing): run `kedro run`"
            + (" then `kedro run --pipeline export`" if kind == "merged" else "")
            + " to make one"
        )
    try:
        raw = json.loads(path.read_text())
        raw["id2label"] = {int(k): v for k, v in raw["id2label"].items()}
        b = Bundle(**raw)
    except (ValueError, TypeError, KeyError) as e:
        raise BundleError(f"{path} is not a valid bundle manifest ({e})") from None
    try:
        bundle_task(b).check()
    except ValueError as e:
        raise BundleError(f"{path}: {e}: the bundle is mixed") from None
    if b.format != BUNDLE_FORMAT or b.kind != kind:
        raise BundleError(
            f"{path}: a {b.kind} bundle of format {b.format}; expected a {kind} bundle of format {BUNDLE_FORMAT}"
        )
    own = [d / ADAPTER_WEIGHTS] if kind == "adapter" else weight_files(d)
    if not all(p.is_file() for p in own):
        raise BundleError(f"{d} has no {ADAPTER_WEIGHTS}: the bundle is incomplete")
    if kind == "adapter":
        if files_sha256(own) != b.weights_sha256:
            raise BundleError(
                f"{d}: {ADAPTER_WEIGHTS} is not the file {BUNDLE_FILE} was written with (weights hash differs)"
            )
        blocks = trainable_blocks(json.loads((d / "adapter_config.json").read_text()))
        if blocks != sorted(b.trainable_layers):
            raise BundleError(
                f"{d}: adapter_config.json trains blocks {blocks}, {BUNDLE_FILE} says {b.trainable_layers}"
            )
    else:
        _check_merged(d, b)
    rows = _score_rows(own[0]) if len(own) == 1 else None
    if rows is not None and rows != len(b.id2label):
        raise BundleError(
            f"{d}: the score head has {rows} classes, {BUNDLE_FILE} has {len(b.id2label)}: the bundle is mixed"
        )
    return b


def _check_merged(d: Path, b: Bundle) -> None:
    """A merged bundle's config.json must name the task's problem type and labels, its tokenizer the hashed one."""
    config = read_config(d)
    labels = {int(k): v for k, v in config.get("id2label", {}).items()}
    if config.get("problem_type", SINGLE) != b.problem_type:
        raise BundleError(
            f"{d}: config.json problem_type {config.get('problem_type')!r} differs from {BUNDLE_FILE}'s "
            f"{b.problem_type!r}: the bundle is mixed; export again"
        )
    if labels != b.id2label:
        raise BundleError(
            f"{d}: config.json labels {sorted(labels.values())} differ from {BUNDLE_FILE}'s "
            f"{sorted(b.id2label.values())}: the bundle is mixed; export again"
        )
    if tokenizer_sha256(d) != b.tokenizer_sha256:
        raise BundleError(f"{d}: the tokenizer files are not the ones {BUNDLE_FILE} was written with")


def read_examples(model_dir: str | Path) -> pd.DataFrame:
    """The bundle's example rows (may be empty)."""
    path = Path(model_dir) / EXAMPLES_FILE
    return pd.DataFrame(json.loads(path.read_text())) if path.is_file() else pd.DataFrame()


def check_base(bundle: Bundle, resolved: str | Path) -> None:
    """Fail unless the checkpoint at ``resolved`` is the one the adapter was trained on (weights and tokenizer)."""
    d = base_checkpoint_dir(str(resolved))
    if d is None:
        raise BundleError(f"base model {bundle.base_model} of the adapter is not on this machine")
    if weights_sha256(d) != bundle.base_weights_sha256:
        raise BundleError(
            f"base model {bundle.base_model}: its weights changed since the adapter was trained "
            f"(hash {weights_sha256(d)[:12]} != {bundle.base_weights_sha256[:12]}); use that checkpoint or train again"
        )
    if tokenizer_sha256(d) != bundle.tokenizer_sha256:
        raise BundleError(f"base model {bundle.base_model}: its tokenizer files changed since the adapter was trained")
