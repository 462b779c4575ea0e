"""A linear probe per block: where in the base model the task's information lives, before choosing K
(``model.trainable_layers``).

One no_grad pass of the base classifier over the train and validation splits keeps each block's output at the
pooled token (``pooled``); a scikit-learn probe per block is fitted on train and scored on validation
(``fit``), and K is recommended from the curve (:func:`recommend`); ``run`` composes them into the report of
``kedro run --pipeline probe``, ``plot`` draws it.
"""

from toptune.probe.fit import METRIC, RULE, estimator, probe_block, probe_blocks, recommend
from toptune.probe.plot import probe_figure
from toptune.probe.pooled import pooled_by_block, probe_rows
from toptune.probe.run import base_model, run_probe

__all__ = [
    "METRIC",
    "RULE",
    "base_model",
    "estimator",
    "pooled_by_block",
    "probe_block",
    "probe_blocks",
    "probe_figure",
    "probe_rows",
    "recommend",
    "run_probe",
]
