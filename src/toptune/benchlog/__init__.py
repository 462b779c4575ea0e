"""Command-line entry points that track their results in MLflow (the library itself never imports it)."""
