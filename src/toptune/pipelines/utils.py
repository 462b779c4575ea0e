"""Small helpers shared by the nodes: shapes kedro-mlflow's metric datasets expect."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def metric_items(values: Mapping[str, float], step: int = 0) -> dict[str, dict]:
    """``{"name": {"value": v, "step": step}}`` for ``MlflowMetricsHistoryDataset``."""
    return {k: {"value": float(v), "step": step} for k, v in values.items()}


def metric_series(rows: Iterable[dict], step_key: str, keys: Iterable[str], prefix: str = "") -> dict[str, list[dict]]:
    """One history per key: ``{"<prefix><key>": [{"value": row[key], "step": row[step_key]}, …]}``."""
    rows = list(rows)
    return {
        f"{prefix}{k}": [{"value": float(r[k]), "step": int(r[step_key])} for r in rows if k in r]
        for k in keys
        if any(k in r for r in rows)
    }


def id2label_from_json(label_map: dict[str, str]) -> dict[int, str]:
    """JSON keys are strings: ``{"0": "neg"}`` → ``{0: "neg"}``."""
    return {int(k): v for k, v in label_map.items()}
