"""``data``: validate and serialise the raw table, split it, tokenise once."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
