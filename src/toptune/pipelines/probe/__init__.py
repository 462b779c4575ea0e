"""``probe``: a linear probe per block of the base model, and the K (``model.trainable_layers``) it recommends."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
