"""Kedro datasets of the project (Kedro layer: the library never imports this).

Nothing here executes code on load: the token store is raw arrays + Arrow + JSON, the adapter safetensors + JSON.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from toptune.data.prepare import Prepared
from toptune.data.read import TableFile, open_table
from toptune.data.store import MANIFEST, read_store, write_store
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


class TableDataset(AbstractDataset):
    """The raw table as a file read in record batches (CSV or Parquet, or a directory of Parquet files):
    loading opens it and reads nothing (:class:`toptune.data.read.TableFile`); the data pipeline streams it.
    A pandas or Hugging Face dataset in its place works too, read whole by its own dataset."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = PurePosixPath(filepath)
        self.metadata = metadata

    def _load(self) -> TableFile:
        return open_table(Path(self._filepath))

    def _save(self, data) -> None:
        raise DatasetError("raw_data is read only")

    def _exists(self) -> bool:
        return Path(self._filepath).exists()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class TokenisedDataset(AbstractDataset):
    """The token store (:mod:`toptune.data.store`): saving takes the :class:`toptune.data.prepare.Prepared`
    store the data node wrote in a staging directory and swaps it in whole (or splits held in memory, written
    first); loading maps every split from disk, nothing read until a batch asks for it."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = PurePosixPath(filepath)
        self.metadata = metadata

    def _save(self, data: Prepared | dict[str, Encoded]) -> None:
        final = Path(self._filepath)
        if isinstance(data, Prepared):
            final.parent.mkdir(parents=True, exist_ok=True)
            staged = data.root
            if os.stat(staged).st_dev != os.stat(final.parent).st_dev:  # another disk: a rename cannot move it
                staged = staging_dir(final)
                shutil.rmtree(staged.parent, ignore_errors=True)
                shutil.copytree(data.root, staged)
                shutil.rmtree(data.root.parent)
            swap_dir(staged, final)
            if data.root.parent.is_dir() and not any(data.root.parent.iterdir()):
                data.root.parent.rmdir()  # the node's staging container, when the catalog names another place
            return
        staged = staging_dir(final)
        shutil.rmtree(staged.parent, ignore_errors=True)
        write_store(staged, data)
        swap_dir(staged, final)

    def _load(self) -> dict[str, Encoded]:
        return read_store(Path(self._filepath))

    def _exists(self) -> bool:
        return (Path(self._filepath) / MANIFEST).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class FiguresDataset(AbstractDataset):
    """A directory of PNG plots: saving takes ``{name: matplotlib Figure}``, removes the PNGs an earlier run
    left (another problem type draws other plots) and writes ``<name>.png`` each; wrapped in kedro-mlflow's
    artifact dataset the directory is logged as ``plots/``."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None):
        self._filepath = PurePosixPath(filepath)
        self.metadata = metadata

    def _save(self, data: dict) -> None:
        import matplotlib.pyplot as plt  # only a run that plots pays matplotlib's import

        out = Path(self._filepath)
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob("*.png"):
            stale.unlink()
        for name, fig in data.items():
            fig.savefig(out / f"{name}.png", dpi=110)
            plt.close(fig)

    def _load(self) -> list[str]:
        return sorted(p.name for p in Path(self._filepath).glob("*.png"))

    def _exists(self) -> bool:
        return Path(self._filepath).is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}
