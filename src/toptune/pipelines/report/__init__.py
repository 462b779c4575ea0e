"""``report``: training curves and the run summary."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
