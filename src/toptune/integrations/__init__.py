"""The only importers of Kedro and MLflow (with ``toptune.pipelines``): hooks, datasets, the CLI,
the MLflow model and pyfunc, the benches' tracking."""
