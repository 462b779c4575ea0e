"""``predict``: classify the ``predict_input`` table with the merged checkpoint."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
