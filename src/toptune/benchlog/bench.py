"""``make bench``: run :mod:`toptune.bench` and record it in MLflow, experiment ``toptune-bench``.

Tracking URI ``sqlite:///mlflow.db`` at the project root (``MLFLOW_TRACKING_URI`` overrides it).
"""

from __future__ import annotations

import os
import sys

from toptune import bench


def flat(prefix: str, value, out: dict) -> dict:
    """Flatten nested dicts to ``a.b.c`` keys."""
    if isinstance(value, dict):
        for k, v in value.items():
            flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value
    return out


def log_to_mlflow(result: dict, out_dir: str) -> str:
    """One MLflow run: the config as parameters, each run's figures as metrics, JSON and PNG as artifacts."""
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    mlflow.set_experiment("toptune-bench")
    with mlflow.start_run(run_name="bench") as run:
        mlflow.log_params({k: str(v)[:250] for k, v in flat("", result.get("config", {}), {}).items()})
        mlflow.set_tag("device", str(result.get("device")))
        for name, r in result.get("runs", {}).items():
            for key, value in r.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    mlflow.log_metric(f"{name}.{key}", float(value))
                elif isinstance(value, list) and all(isinstance(x, (int, float)) for x in value):
                    for step, x in enumerate(value):
                        mlflow.log_metric(f"{name}.{key}", float(x), step=step)
        for f in ("bench.json", "bench.png"):
            if os.path.exists(os.path.join(out_dir, f)):
                mlflow.log_artifact(os.path.join(out_dir, f))
        return run.info.run_id


def main(argv: list[str] | None = None) -> dict:
    """``make bench``: the bench's result, also logged to MLflow."""
    argv = sys.argv[1:] if argv is None else argv
    result = bench.main(argv)
    run_id = log_to_mlflow(result, bench.parse_args(argv).out_dir)
    print(f"logged to MLflow experiment toptune-bench, run {run_id}")
    return result


if __name__ == "__main__":
    main()
