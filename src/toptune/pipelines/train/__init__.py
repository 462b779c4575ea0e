"""``train``: LoRA on the top K blocks, frozen prefix per ``training.prefix_mode``."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
