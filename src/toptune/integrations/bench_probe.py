"""``make bench-probe``: run :mod:`toptune.bench.probe` and record it in MLflow, experiment ``toptune-bench``.

One MLflow run named ``bench-probe``: the configuration as parameters; the probe's validation value per
block (``probe.value``, step = block) and the sweep's per K (``sweep.value``, step = K); the recommended
and best K, their values and the gap; ``bench_probe.json`` and the probe's plot as artifacts.
"""

from __future__ import annotations

import os
import sys

import mlflow

from toptune.bench import probe
from toptune.integrations.bench import EXPERIMENT, log_config, log_file, start_run
from toptune.probe.plot import probe_figure


def log_to_mlflow(result: dict, out_dir: str) -> str:
    """One MLflow run ``bench-probe``: configuration, the probe's curve, the sweep by K, the gap, the JSON."""
    with start_run("bench-probe") as run:
        log_config(result["config"], result["device"])
        for row in result["probe"]["layers"]:
            mlflow.log_metric("probe.value", float(row["value"]), step=int(row["block"]))
        for t in result["sweep"]["trials"]:
            if t["value"] is not None:
                mlflow.log_metric("sweep.value", float(t["value"]), step=int(t["params"]["model.trainable_layers"]))
        numbers = {
            "recommended.trainable_layers": result["recommended"]["trainable_layers"],
            "recommended.value": result["recommended"]["value"],
            "sweep.seconds": result["sweep"]["seconds"],
            "sweep.cache_builds": result["sweep"]["cache_builds"],
        }
        if result["best"] is not None:
            numbers |= {f"best.{k}": v for k, v in result["best"].items()} | {"gap": result["gap"]}
        mlflow.log_metrics({k: float(v) for k, v in numbers.items() if v is not None})
        mlflow.log_figure(probe_figure(result["probe"]), "bench_probe.png")
        log_file(os.path.join(out_dir, probe.PROBE_JSON))
        return run.info.run_id


def main(argv: list[str] | None = None, pc: probe.ProbeBenchConfig | None = None) -> dict:
    """``make bench-probe``: the probe bench's result (``pc``, else from ``argv``), also logged to MLflow."""
    pc = pc or probe.parse_args(sys.argv[1:] if argv is None else argv)
    result = probe.main(pc=pc)
    print(f"logged to MLflow experiment {EXPERIMENT}, run {log_to_mlflow(result, pc.out_dir)}")
    return result


if __name__ == "__main__":
    main()
