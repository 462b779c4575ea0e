"""``cache``: run the frozen prefix once and store its output (``training.prefix_mode: cache`` only)."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
