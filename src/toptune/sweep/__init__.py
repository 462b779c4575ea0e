"""A hyperparameter sweep on one prefix cache (``kedro run --pipeline sweep``): Optuna trials of the training
run, every one on the cache built once at the deepest K of the space (``toptune.cache.shelf``).

    space.py   the search space: its parameters drawn per trial, applied to the run's typed configs
    study.py   the study: trials (pruned on the per-epoch validation metric), the best trial kept on disk
"""

from toptune.sweep.space import apply, deepest_block, suggest
from toptune.sweep.study import SweepResult, run_sweep

__all__ = ["SweepResult", "apply", "deepest_block", "run_sweep", "suggest"]
