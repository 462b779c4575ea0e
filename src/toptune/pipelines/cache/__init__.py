"""``cache``: resolve ``training.prefix_mode: auto``; in cache mode run the frozen prefix once and store its output."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
