"""``export``: merge LoRA into the base weights, save the merged checkpoint, log it as an MLflow pyfunc model."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
