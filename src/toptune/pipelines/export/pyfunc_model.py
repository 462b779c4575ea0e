"""The MLflow pyfunc model: a merged toptune checkpoint that classifies tables (MLflow layer).

Logged "from code" (see ``mlflow_model.py``): MLflow copies this file into the model and runs it on
load; ``set_model`` at the bottom hands it the model object. The ``toptune`` package travels in the
model's ``code/`` folder, so loading needs neither this checkout nor PEFT, only the pip requirements.
"""

from __future__ import annotations

import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

MERGED_ARTIFACT = "merged"
"""Artifact key of the merged checkpoint directory."""


class ToptuneClassifierModel(PythonModel):
    """``predict(df)`` → DataFrame ``id``, ``label``, ``prob_<class>``.

    ``df`` has the training table's columns (extra ones, the label column say, are ignored) or a
    ``text`` column of serialised texts. Params (per request, defaults from ``export.*``):
    ``bad_rows`` (``error`` | ``drop``) and ``batch_size``.
    """

    def load_context(self, context) -> None:
        from toptune.export import load_predictor

        self.predictor = load_predictor(context.artifacts[MERGED_ARTIFACT])
        self.defaults = dict(context.model_config or {})

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException

        from toptune.config import ConfigError
        from toptune.data import DataValidationError
        from toptune.export import prepare_rows

        p = {"bad_rows": "error", "batch_size": 64, **self.defaults, **{k: v for k, v in (params or {}).items() if v is not None}}
        try:
            rows = prepare_rows(model_input, self.predictor.serving, str(p["bad_rows"]))
        except (DataValidationError, ConfigError) as e:
            # A bad request, not a server fault: the REST server answers 400 with this message.
            raise MlflowException.invalid_parameter_value(str(e)) from None
        return self.predictor.predict(rows, int(p["batch_size"]))


set_model(ToptuneClassifierModel())
