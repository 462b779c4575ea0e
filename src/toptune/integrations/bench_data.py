"""``make bench-data``: run :mod:`toptune.bench.data` and record it in MLflow, experiment ``toptune-bench``.

One MLflow run named ``bench-data``: the configuration as parameters; per size, its figures as metrics
with the row count as the step; the summary ratios as ``summary.*``; ``bench_data.json`` as artifact.
"""

from __future__ import annotations

import os
import sys

from toptune.bench import data
from toptune.integrations.bench import EXPERIMENT, log_by_rows


def log_to_mlflow(result: dict, out_dir: str) -> str:
    """One MLflow run ``bench-data``: configuration, each size's figures by rows, the summary, the JSON."""
    return log_by_rows("bench-data", result, os.path.join(out_dir, data.DATA_JSON))


def main(argv: list[str] | None = None, cfg: data.DataBenchConfig | None = None) -> dict:
    """``make bench-data``: the data bench's result (``cfg``, else from ``argv``), also logged to MLflow."""
    cfg = cfg or data.parse_args(sys.argv[1:] if argv is None else argv)
    result = data.main(cfg=cfg)
    print(f"logged to MLflow experiment {EXPERIMENT}, run {log_to_mlflow(result, cfg.out_dir)}")
    return result


if __name__ == "__main__":
    main()
