"""``evaluate``: test metrics, classification report, test predictions."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
