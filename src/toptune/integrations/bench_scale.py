"""``make bench-scale``: run :mod:`toptune.bench.scale` and record it in MLflow, experiment ``toptune-bench``.

One MLflow run named ``bench-scale``: the configuration as parameters; per point, its figures as
metrics named ``L{num_layers}.{figure}`` with the point's row count as the step (MLflow then plots
each figure against the rows); the summary ratios as ``summary.*``; ``bench_scale.json`` as artifact.
"""

from __future__ import annotations

import os
import sys

from toptune.bench import scale
from toptune.integrations.bench import EXPERIMENT, log_by_rows


def log_to_mlflow(result: dict, out_dir: str) -> str:
    """One MLflow run ``bench-scale``: configuration, each point's figures by rows, the summary, the JSON."""
    path = os.path.join(out_dir, scale.SCALE_JSON)
    return log_by_rows("bench-scale", result, path, lambda r, key: f"L{r['num_layers']}.{key}")


def main(argv: list[str] | None = None, sc: scale.ScaleConfig | None = None) -> dict:
    """``make bench-scale``: the scale bench's result (``sc``, else from ``argv``), also logged to MLflow."""
    sc = sc or scale.parse_args(sys.argv[1:] if argv is None else argv)
    result = scale.main(sc=sc)
    run_id = log_to_mlflow(result, sc.out_dir)
    print(f"logged to MLflow experiment {EXPERIMENT}, run {run_id}")
    return result


if __name__ == "__main__":
    main()
