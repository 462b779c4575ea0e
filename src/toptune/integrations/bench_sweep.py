"""``make bench-sweep``: run :mod:`toptune.bench.sweep` and record it in MLflow, experiment ``toptune-bench``.

One MLflow run named ``bench-sweep``: the configuration as parameters; per side its seconds, cache builds,
best value and best test accuracy, and each trial's value and seconds with the trial's number as the step;
the summary ratios as ``summary.*``; ``bench_sweep.json`` as artifact.
"""

from __future__ import annotations

import os
import sys

import mlflow

from toptune.bench import sweep
from toptune.integrations.bench import EXPERIMENT, log_config, log_file, start_run


def log_to_mlflow(result: dict, out_dir: str) -> str:
    """One MLflow run ``bench-sweep``: configuration, each side's figures and trials, the summary, the JSON."""
    with start_run("bench-sweep") as run:
        log_config(result["config"], result["device"])
        for name, side in result["sides"].items():
            numbers = {
                "seconds": side["seconds"],
                "cache_builds": side.get("cache_builds"),
                "pruned": side.get("pruned"),
            }
            numbers |= {
                "best_value": (side["best"] or {}).get("value"),
                "best_test_accuracy": side["best_test_accuracy"],
            }
            mlflow.log_metrics({f"{name}.{k}": float(v) for k, v in numbers.items() if v is not None})
            for t in side["trials"]:
                for key in ("value", "seconds"):
                    if t[key] is not None:
                        mlflow.log_metric(f"{name}.trial_{key}", float(t[key]), step=int(t["number"]))
        mlflow.log_metrics({f"summary.{k}": float(v) for k, v in result["summary"].items()})
        log_file(os.path.join(out_dir, sweep.SWEEP_JSON))
        return run.info.run_id


def main(argv: list[str] | None = None, sc: sweep.SweepBenchConfig | None = None) -> dict:
    """``make bench-sweep``: the sweep bench's result (``sc``, else from ``argv``), also logged to MLflow."""
    sc = sc or sweep.parse_args(sys.argv[1:] if argv is None else argv)
    result = sweep.main(sc=sc)
    print(f"logged to MLflow experiment {EXPERIMENT}, run {log_to_mlflow(result, sc.bench.out_dir)}")
    return result


if __name__ == "__main__":
    main()
