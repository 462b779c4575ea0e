"""The export's inputs as training leaves them (an adapter bundle with non-zero LoRA B), the merged
bundle, and a fresh sqlite MLflow store with a finished training run: shared by the serve, REST and
bad-input tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from toptune.config import DataConfig, ExportConfig, LoraSettings
from toptune.model.load import load_classifier
from toptune.model.lora import add_adapters
from toptune.model.tokenizer import load_tokenizer
from toptune.serve.bundle import Bundle, base_identity, write_bundle
from toptune.serve.merge import export_bundle
from toptune.serve.predict import ServingConfig

ROOT = Path(__file__).resolve().parents[2]
REVIEWS = ROOT / "data" / "01_raw" / "reviews.csv"
ID2LABEL = {0: "negative", 1: "neutral", 2: "positive"}
SERVING = ServingConfig(DataConfig().text_template, max_length=64, id_column="id", label_column="sentiment")
LAYERS = [2, 3]  # LoRA on the top 2 of the tiny model's 4 blocks


def raw_rows(n: int = 24) -> pd.DataFrame:
    """The first ``n`` rows of the bundled table: id, product, channel, review, sentiment."""
    return pd.read_csv(REVIEWS).head(n)


def write_adapter(base: Path, out_dir: Path) -> Path:
    """An adapter bundle as training leaves it: PEFT adapter with nonzero LoRA B (a fresh one is 0:
    merging would be a no-op and the equivalence test could not fail) and a perturbed ``score`` copy,
    plus ``toptune.json`` and the example rows."""
    tok = load_tokenizer(base)
    model = add_adapters(load_classifier(base, ID2LABEL, tok.pad_token_id, seed=0), LoraSettings(r=4, alpha=8), LAYERS)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    model.save_pretrained(out_dir)
    bundle = Bundle(
        kind="adapter",
        id2label=ID2LABEL,
        text_template=SERVING.text_template,
        max_length=SERVING.max_length,
        id_column="id",
        label_column="sentiment",
        trainable_layers=LAYERS,
        mlflow_run_id=None,
        **base_identity(str(base), base),
    )
    write_bundle(out_dir, bundle, raw_rows(16)[["id", "product", "channel", "review"]])
    return out_dir


def make_export(root: Path, base: Path) -> dict[str, Path]:
    """Adapter + merged bundles under ``root`` (the training run's and the export pipeline's products)."""
    adapter = write_adapter(base, root / "adapter")
    merged = export_bundle(adapter, check_rows=16)
    assert merged.check["merge_check_rows"] == 16 and merged.check["merge_max_abs_diff"] <= 1e-4
    return {"adapter": adapter, "merged": merged.save(root / "merged")}


def use_store(root: Path, monkeypatch) -> str:
    """Point MLflow (this process and children) at a fresh sqlite store under ``root``; restored after."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    uri = f"sqlite:///{root / 'mlflow.db'}"
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(var, uri)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)  # a Kedro session earlier may have set one
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    mlflow.MlflowClient().create_experiment("toptune", artifact_location=(root / "artifacts").as_uri())
    return uri


def log_to_training_run(root: Path, merged: Path, monkeypatch) -> dict:
    """A finished "training run" in a fresh store, and the pyfunc model logged to it as the export node does."""
    import mlflow

    from toptune.integrations.mlflow_model import known_run, log_pyfunc

    use_store(root, monkeypatch)
    client = mlflow.MlflowClient()
    run = client.create_run(client.get_experiment_by_name("toptune").experiment_id, run_name="__default__")
    client.set_terminated(run.info.run_id)
    assert known_run("0" * 32) is None  # a run this store does not know: logged to an export run instead
    return log_pyfunc(merged, raw_rows(5), ExportConfig(), known_run(run.info.run_id))
