"""The merged checkpoint as a Kedro dataset (Kedro layer)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset

from toptune.export import SERVING_FILE, MergedCheckpoint


class MergedCheckpointDataset(AbstractDataset):
    """A merged transformers checkpoint directory (weights, config, tokenizer, ``toptune.json``).

    Saving writes a :class:`toptune.export.MergedCheckpoint`; loading returns the directory's path, from
    which ``AutoModelForSequenceClassification.from_pretrained`` (or ``toptune.export.load_predictor``)
    loads it.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = PurePosixPath(filepath)
        self.metadata = metadata

    def _save(self, checkpoint: MergedCheckpoint) -> None:
        checkpoint.save(Path(self._filepath))

    def _load(self) -> str:
        if not self._exists():
            raise FileNotFoundError(f"no merged checkpoint at {self._filepath}: run `kedro run --pipeline export` first")
        return str(self._filepath)

    def _exists(self) -> bool:
        return (Path(self._filepath) / SERVING_FILE).is_file() and (Path(self._filepath) / "config.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
