"""Kedro datasets of the project (Kedro layer: the library never imports this).

Nothing here executes code on load: the tokenised splits are Parquet, the adapter is safetensors + JSON.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from kedro.io import AbstractDataset

from toptune.data.tokens import Encoded
from toptune.io.atomic import discard_dir, staging_dir, swap_dir
from toptune.serve.bundle import BundleError, read_bundle, write_bundle

PENDING: list[tuple[Path, Path]] = []
"""(staged, final) bundles saved by this process's running pipeline: the project hooks commit them
when the run succeeds (:func:`commit_pending`) and discard them when it fails."""


def commit_pending() -> list[Path]:
    done = [swap_dir(staged, final) for staged, final in PENDING if staged.is_dir()]
    PENDING.clear()
    return done


def discard_pending() -> None:
    for _, final in PENDING:
        discard_dir(final)
    PENDING.clear()


class PeftAdapterDataset(AbstractDataset):
    """The adapter bundle: a PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``)
    with ``toptune.json`` and ``examples.json`` (see :mod:`toptune.serve.bundle`).

    Saving takes ``{"model": PeftModel, "bundle": Bundle, "examples": DataFrame}`` and writes them to a
    staging directory (``_filepath``, which kedro-mlflow logs as the artifact ``adapter/``); the run's
    hooks swap it in at ``filepath`` only when the whole run succeeds. Loading checks the bundle at
    ``filepath`` and returns its path, from which ``PeftModel.from_pretrained`` rebuilds the model.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._final = Path(filepath)
        self._filepath = PurePosixPath(staging_dir(self._final))
        self.metadata = metadata

    def _save(self, data: dict) -> None:
        staged = Path(self._filepath)
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        data["model"].save_pretrained(str(staged))
        write_bundle(staged, data["bundle"], data.get("examples"))
        PENDING.append((staged, self._final))

    def _load(self) -> str:
        if not (self._final / "adapter_config.json").is_file():
            raise BundleError(f"no adapter at {self._final}: run `kedro run` (training) first")
        read_bundle(self._final, "adapter")
        return str(self._final)

    def _exists(self) -> bool:
        return (self._final / "adapter_config.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._final)}


class TokenisedDataset(AbstractDataset):
    """Tokenised splits (``{split: Encoded}``) as one Parquet file per split in a directory: columns
    ``id`` (string), ``input_ids`` (list of int32), ``label`` (int64); the truncation count in the
    file's metadata. Written to a sibling directory and renamed into place."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = PurePosixPath(filepath)
        self.metadata = metadata

    def _save(self, splits: dict[str, Encoded]) -> None:
        final = Path(self._filepath)
        staged = staging_dir(final)
        shutil.rmtree(staged.parent, ignore_errors=True)
        staged.mkdir(parents=True)
        for name, enc in splits.items():
            table = pa.table(
                {
                    "id": pa.array(enc.ids, pa.string()),
                    "input_ids": pa.array(enc.input_ids, pa.list_(pa.int32())),
                    "label": pa.array(enc.labels, pa.int64()),
                }
            )
            table = table.replace_schema_metadata({"truncated": str(int(enc.truncated))})
            pq.write_table(table, staged / f"{name}.parquet")
        swap_dir(staged, final)

    def _load(self) -> dict[str, Encoded]:
        final = Path(self._filepath)
        if not final.is_dir():
            raise FileNotFoundError(f"no tokenised splits at {final}: run `kedro run` (the data pipeline) first")
        out = {}
        for path in sorted(final.glob("*.parquet")):
            table = pq.read_table(path)
            truncated = (table.schema.metadata or {}).get(b"truncated", b"0")
            out[path.stem] = Encoded(
                ids=table["id"].to_pylist(),
                input_ids=table["input_ids"].to_pylist(),
                labels=table["label"].to_pylist(),
                truncated=int(truncated),
            )
        return out

    def _exists(self) -> bool:
        return Path(self._filepath).is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
