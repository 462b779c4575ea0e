"""The MLflow pyfunc model: a merged toptune bundle that classifies tables (MLflow layer).

Logged "from code" (see ``toptune.integrations.mlflow_model``): MLflow copies this file into the model and runs it on
load; ``set_model`` at the bottom hands it the model object. The ``toptune`` package travels in the
model's ``code/`` folder, so loading needs neither this checkout nor PEFT, only the pip requirements.

A response never carries a stack trace or a path: a bad request (a bad row, ``params.batch_size=0``)
is an MLflow ``INVALID_PARAMETER_VALUE`` (HTTP 400) whose message names the row, column or parameter;
anything else is logged in full on the server under an error id and answered with that id only.
"""

from __future__ import annotations

import logging
import uuid

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR
from mlflow.pyfunc import PythonModel

from toptune.config import ConfigError
from toptune.data.table import DataValidationError
from toptune.serve.predict import load_predictor, prepare_rows, request_params

MERGED_ARTIFACT = "merged"
"""Artifact key of the merged model directory."""

log = logging.getLogger("toptune.serve.predict")


class ToptuneClassifierModel(PythonModel):
    """``predict(df)`` → DataFrame ``id``, then the task's answer: ``label`` + ``prob_<class>`` | ``labels`` +
    ``prob_<class>`` | ``prediction``.

    ``df`` has the training table's columns (extra ones, the label column say, are ignored) or a
    ``text`` column of serialised texts. Params (per request, defaults from ``export.*``):
    ``bad_rows`` (``error`` | ``drop``) and ``batch_size`` (an integer >= 1).
    """

    def load_context(self, context) -> None:
        self.predictor = load_predictor(context.artifacts[MERGED_ARTIFACT])
        self.defaults = dict(context.model_config or {})

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        try:
            bad_rows, batch_size = request_params(params, self.defaults)
            rows = prepare_rows(model_input, self.predictor.serving, bad_rows)
            if skipped := rows.skipped("bad_rows=drop"):
                log.warning("%s", skipped)
            return self.predictor.predict(rows, batch_size)
        except (DataValidationError, ConfigError) as e:
            # A bad request, not a server fault: the REST server answers 400 with this message.
            raise MlflowException.invalid_parameter_value(str(e)) from None
        except Exception:  # noqa: BLE001 - the trace stays in the server's log, the caller gets an id
            error_id = uuid.uuid4().hex[:12]
            log.exception("prediction failed (error id %s)", error_id)
            raise MlflowException(f"internal error {error_id}: see the server log", error_code=INTERNAL_ERROR) from None


set_model(ToptuneClassifierModel())
