"""The merged model as a Kedro dataset (Kedro layer)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset

from toptune.serve.bundle import BUNDLE_FILE, BundleError, read_bundle
from toptune.serve.merge import MergedModel


class MergedModelDataset(AbstractDataset):
    """A merged bundle: a transformers checkpoint directory (weights, config, tokenizer) with
    ``toptune.json`` and ``examples.json``.

    Saving writes a :class:`toptune.serve.merge.MergedModel` (staged, then swapped in); loading checks
    the bundle and returns the directory's path, from which ``toptune.serve.predict.load_predictor`` (or
    ``AutoModelForSequenceClassification.from_pretrained``) loads it.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = PurePosixPath(filepath)
        self.metadata = metadata

    def _save(self, merged: MergedModel) -> None:
        merged.save(Path(self._filepath))

    def _load(self) -> str:
        if not self._exists():
            raise BundleError(f"no merged checkpoint at {self._filepath}: run `kedro run --pipeline export` first")
        read_bundle(Path(self._filepath), "merged")
        return str(self._filepath)

    def _exists(self) -> bool:
        return (Path(self._filepath) / BUNDLE_FILE).is_file() and (Path(self._filepath) / "config.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
