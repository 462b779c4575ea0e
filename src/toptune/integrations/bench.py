"""``make bench``: run :mod:`toptune.bench.main` and record it in MLflow, experiment ``toptune-bench``.

Tracking URI ``sqlite:///mlflow.db`` at the project root (``MLFLOW_TRACKING_URI`` overrides it).
"""

from __future__ import annotations

import os
import sys

import mlflow

from toptune.bench import main as bench

EXPERIMENT = "toptune-bench"


def flat(prefix: str, value, out: dict) -> dict:
    """Flatten nested dicts to ``a.b.c`` keys."""
    if isinstance(value, dict):
        for k, v in value.items():
            flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value
    return out


def log_numbers(prefix: str, row: dict) -> None:
    """Each number of ``row`` as metric ``prefix.key``; each list of numbers as steps of one metric."""
    for key, value in row.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            mlflow.log_metric(f"{prefix}.{key}", float(value))
        elif isinstance(value, list) and value and all(isinstance(x, (int, float)) for x in value):
            for step, x in enumerate(value):
                mlflow.log_metric(f"{prefix}.{key}", float(x), step=step)


def start_run(run_name: str):
    """An MLflow run in experiment ``toptune-bench`` at ``MLFLOW_TRACKING_URI`` (default ``sqlite:///mlflow.db``)."""
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    mlflow.set_experiment(EXPERIMENT)
    return mlflow.start_run(run_name=run_name)


def log_config(config: dict, device: str, prefix: str = "") -> None:
    """A bench's configuration as parameters ``<prefix><key>`` of the active run (flattened, each value cut to
    MLflow's 250 characters), its machine as tag ``<prefix>device``."""
    mlflow.log_params({f"{prefix}{k}": str(v)[:250] for k, v in flat("", config, {}).items()})
    mlflow.set_tag(f"{prefix}device", device)


def log_file(path: str) -> None:
    """``path`` as an artifact of the active run, when the bench wrote it."""
    if os.path.exists(path):
        mlflow.log_artifact(path)


def log_by_rows(run_name: str, result: dict, json_path: str, metric=lambda row, key: key) -> str:
    """One MLflow run of a bench whose points grow in rows (bench-scale, bench-data): the configuration as
    parameters, each point's numbers as metrics ``metric(point, key)`` with its rows as the step, the
    summary as ``summary.*``, the JSON as artifact; returns the run id."""
    with start_run(run_name) as run:
        log_config(result["config"], result["machine"])
        for r in result["runs"]:
            for key, value in r.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "rows":
                    mlflow.log_metric(metric(r, key), float(value), step=int(r["rows"]))
        mlflow.log_metrics({f"summary.{k}": float(v) for k, v in result["summary"].items()})
        if "cached_epoch" in result:
            log_numbers("cached_epoch", result["cached_epoch"])
        log_file(json_path)
        return run.info.run_id


def log_to_mlflow(result: dict, out_dir: str) -> str:
    """One MLflow run: each bench's config as parameters, each run's figures and the ratios as metrics
    (the Qwen3-4B-shaped bench's under ``gpu_4b.``), JSON, PNG and the profiles' traces as artifacts."""
    with start_run("bench") as run:
        for prefix, part in ([("", result)] if "runs" in result else []) + (
            [("gpu_4b.", result["gpu_4b"])] if "gpu_4b" in result else []
        ):
            log_config(part.get("config", {}), str(part.get("device")), prefix)
            for name, row in part["runs"].items():
                log_numbers(f"{prefix}{name}", row)
            log_numbers(f"{prefix}speedups", part.get("speedups", {}))
            for profiled in part.get("profile", {}).values():  # the Chrome traces of toptune.bench.profile
                log_file(profiled["trace"])
        for f in ("bench.json", "bench.png"):
            log_file(os.path.join(out_dir, f))
        return run.info.run_id


def main(argv: list[str] | None = None) -> dict:
    """``make bench``: the bench's result, also logged to MLflow."""
    bc, tiny = bench.parse_args(sys.argv[1:] if argv is None else argv)
    result = bench.main(bc=bc, tiny=tiny)
    run_id = log_to_mlflow(result, bc.out_dir)
    print(f"logged to MLflow experiment {EXPERIMENT}, run {run_id}")
    return result


if __name__ == "__main__":
    main()
