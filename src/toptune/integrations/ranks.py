"""Several processes, one job: what the Kedro layer does differently under ``torchrun``.

Every process runs the whole pipeline (that is how each gets the data, the model and its share of
the work), but only rank 0 is visible from outside: settings.py registers the MLflow hook on rank 0
alone, and on the other ranks :class:`RankHooks` turns every dataset the pipeline writes into an
in-memory one, so each output file is written once, by rank 0. The other ranks log warnings and
errors only, to the console (the log file is rank 0's). The process group is joined when the context is
created and left when the run ends.
"""

from __future__ import annotations

import logging

from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset

from toptune.train import distributed

QUIET_LOGGERS = ("", "kedro", "toptune")
"""Loggers turned down to warnings on ranks other than 0 (root, Kedro's, ours)."""


def leave_log_file_to_rank_zero() -> None:
    """On ranks other than 0, drop the file handlers (``toptune.log``, conf/logging.yml) of the root and
    ``toptune.errors`` loggers: N processes appending to one rotating file interleave and race at
    rotation. Called when settings.py is imported, before the project's imports log anything (Kedro
    reads conf/logging.yml before any project code runs, and logs one line to the file doing so)."""
    if distributed.is_main():
        return
    for name in ("", "toptune.errors"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(handler)
            handler.close()


class RankHooks:
    """Join the job's process group; on ranks other than 0, keep outputs in memory and log less."""

    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        distributed.init()
        if not distributed.is_main():
            for name in QUIET_LOGGERS:
                logging.getLogger(name).setLevel(logging.WARNING)

    @hook_impl
    def before_pipeline_run(self, run_params: dict, pipeline, catalog) -> None:
        if distributed.is_main():
            return
        for name in pipeline.all_outputs():
            catalog[name] = MemoryDataset(copy_mode="assign")

    @hook_impl
    def after_pipeline_run(self) -> None:
        distributed.shutdown()

    @hook_impl
    def on_pipeline_error(self) -> None:
        distributed.shutdown()
