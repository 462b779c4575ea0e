"""Thin Kedro pipelines over the ``toptune`` library (one directory per pipeline)."""
