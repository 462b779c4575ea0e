"""``make bench-data``: run :mod:`toptune.bench.data` and record it in MLflow, experiment ``toptune-bench``.

One MLflow run named ``bench-data``: the configuration as parameters; per size, its figures as metrics
with the row count as the step; the summary ratios as ``summary.*``; ``bench_data.json`` as artifact.
"""

from __future__ import annotations

import os
import sys

import mlflow

from toptune.bench import data
from toptune.integrations.bench import EXPERIMENT, flat, start_run


def log_to_mlflow(result: dict, out_dir: str) -> str:
    with start_run("bench-data") as run:
        mlflow.log_params({k: str(v)[:250] for k, v in flat("", result["config"], {}).items()})
        mlflow.set_tag("device", result["machine"])
        for r in result["runs"]:
            for key, value in r.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "rows":
                    mlflow.log_metric(key, float(value), step=int(r["rows"]))
        mlflow.log_metrics({f"summary.{k}": float(v) for k, v in result["summary"].items()})
        for key, value in result.get("cached_epoch", {}).items():
            if isinstance(value, (int, float)):
                mlflow.log_metric(f"cached_epoch.{key}", float(value))
        path = os.path.join(out_dir, data.DATA_JSON)
        if os.path.exists(path):
            mlflow.log_artifact(path)
        return run.info.run_id


def main(argv: list[str] | None = None, cfg: data.DataBenchConfig | None = None) -> dict:
    """``make bench-data``: the data bench's result (``cfg``, else from ``argv``), also logged to MLflow."""
    cfg = cfg or data.parse_args(sys.argv[1:] if argv is None else argv)
    result = data.main(cfg=cfg)
    print(f"logged to MLflow experiment {EXPERIMENT}, run {log_to_mlflow(result, cfg.out_dir)}")
    return result


if __name__ == "__main__":
    main()
