"""``inspect``: per block and per prefix mode, what the autograd graph keeps and what it costs."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
