"""Kedro datasets of the project (Kedro layer: the library never imports this)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset


class PeftAdapterDataset(AbstractDataset):
    """A PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``).

    Saving calls ``save_pretrained`` on a ``PeftModel``; loading returns the directory's path, from
    which ``PeftModel.from_pretrained`` rebuilds the model on top of its base checkpoint.
    ``_filepath`` lets kedro-mlflow's ``MlflowArtifactDataset`` log the directory as artifacts.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = PurePosixPath(filepath)
        self.metadata = metadata

    def _save(self, model) -> None:
        Path(self._filepath).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(self._filepath))

    def _load(self) -> str:
        if not (Path(self._filepath) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"no PEFT adapter at {self._filepath}: run `kedro run` (training) first")
        return str(self._filepath)

    def _exists(self) -> bool:
        return (Path(self._filepath) / "adapter_config.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
