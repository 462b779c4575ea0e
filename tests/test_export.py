"""Export and predict: the merged checkpoint equals the adapter, loads without PEFT, and the MLflow
pyfunc model, the library and the ``predict`` node give the same predictions."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from toptune.config import ConfigError, DataConfig, LoraSettings
from toptune.data.table import DataValidationError, render_texts
from toptune.model.load import load_classifier
from toptune.model.lora import add_adapters
from toptune.model.tokenizer import load_tokenizer
from toptune.serve.bundle import Bundle, base_identity, write_bundle
from toptune.serve.merge import ExportConfig, export_bundle, load_trained
from toptune.serve.predict import (
    PredictConfig,
    ServingConfig,
    load_predictor,
    logits_of,
    prepare_rows,
)

ROOT = Path(__file__).resolve().parents[1]
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
    bundle = Bundle(kind="adapter", id2label=ID2LABEL, text_template=SERVING.text_template, max_length=SERVING.max_length,
                    id_column="id", label_column="sentiment", trainable_layers=LAYERS, mlflow_run_id=None,
                    **base_identity(str(base), base))
    write_bundle(out_dir, bundle, raw_rows(16)[["id", "product", "channel", "review"]])
    return out_dir


def make_export(root: Path, base: Path) -> dict[str, Path]:
    """Adapter + merged bundles under ``root`` (the training run's and the export pipeline's products)."""
    adapter = write_adapter(base, root / "adapter")
    merged = export_bundle(adapter, check_rows=16)
    assert merged.check["merge_check_rows"] == 16 and merged.check["merge_max_abs_diff"] <= 1e-4
    return {"adapter": adapter, "merged": merged.save(root / "merged")}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_qwen3):
    return make_export(tmp_path_factory.mktemp("export"), tiny_qwen3)


def real_input_ids(tok, n: int = 16) -> list[list[int]]:
    return tok(render_texts(raw_rows(n), SERVING.text_template), add_special_tokens=False)["input_ids"]


def test_merged_logits_equal_adapter_logits(exported, tiny_qwen3):
    peft_model, tok = load_trained(tiny_qwen3, exported["adapter"], ID2LABEL)
    ids = real_input_ids(tok)
    adapter_logits = logits_of(peft_model, ids, tok.pad_token_id, batch_size=5)  # (N, C), uneven batches
    predictor = load_predictor(exported["merged"], device="cpu")
    merged_logits = logits_of(predictor.model, ids, predictor.model.config.pad_token_id, batch_size=16)
    np.testing.assert_allclose(merged_logits, adapter_logits, atol=1e-4, rtol=0)
    # The LoRA updates are really folded in: top blocks changed, lower blocks untouched.
    base, merged = load_file(tiny_qwen3 / "model.safetensors"), load_file(exported["merged"] / "model.safetensors")
    key = "model.layers.{}.self_attn.q_proj.weight"
    assert (merged[key.format(3)] - base[key.format(3)]).abs().max() > 1e-3
    assert torch.equal(merged[key.format(0)], base[key.format(0)])
    assert not any("lora" in k or "modules_to_save" in k for k in merged)


def test_merged_checkpoint_loads_without_peft(exported, tiny_qwen3, tmp_path):
    peft_model, tok = load_trained(tiny_qwen3, exported["adapter"], ID2LABEL)
    expected = logits_of(peft_model, real_input_ids(tok, 8), tok.pad_token_id, batch_size=8)
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["peft"] = None  # any import of peft now fails
        import pandas as pd
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        m = AutoModelForSequenceClassification.from_pretrained({str(exported["merged"])!r})
        tok = AutoTokenizer.from_pretrained({str(exported["merged"])!r})
        from toptune.serve.predict import logits_of, load_predictor, prepare_rows
        p = load_predictor({str(exported["merged"])!r}, device="cpu")
        rows = pd.read_csv({str(REVIEWS)!r}).head(8)
        enc = tok(prepare_rows(rows, p.serving).texts, add_special_tokens=False)["input_ids"]
        print(json.dumps({{"id2label": m.config.id2label, "label2id": m.config.label2id, "pad": m.config.pad_token_id,
                          "arch": m.config.architectures, "logits": logits_of(m, enc, m.config.pad_token_id, 4).tolist(),
                          "labels": p.predict(prepare_rows(rows, p.serving))["label"].tolist()}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert {int(k): v for k, v in got["id2label"].items()} == ID2LABEL
    assert got["label2id"] == {v: k for k, v in ID2LABEL.items()}
    assert got["pad"] == tok.pad_token_id == 151643
    assert got["arch"] == ["Qwen3ForSequenceClassification"]
    np.testing.assert_allclose(np.array(got["logits"]), expected, atol=1e-4, rtol=0)
    assert got["labels"] == [ID2LABEL[i] for i in expected.argmax(-1)]
    files = {p.name for p in exported["merged"].iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "toptune.json",
            "examples.json"} <= files
    assert "adapter_config.json" not in files


# --- predict-row validation (no model needed) ----------------------------------------------------


def test_prepare_rows_uses_template_ignores_label_and_keeps_ids():
    rows = prepare_rows(raw_rows(3), SERVING)
    assert rows.ids == ["r00000", "r00001", "r00002"] and rows.source == "template columns"
    assert rows.texts[0] == "Product: camera\nChannel: phone\nReview: The grip is reliable, but the shutter is not sturdy."
    assert rows.counts == {"rows_in": 3, "rows_predicted": 3, "dropped_empty_text": 0, "dropped_non_string": 0}
    no_ids = prepare_rows(raw_rows(3).drop(columns=["id", "sentiment"]), SERVING)
    assert no_ids.ids == ["0", "1", "2"] and no_ids.texts == rows.texts


def test_prepare_rows_text_column_and_missing_column():
    rows = prepare_rows(pd.DataFrame({"text": ["Review: fine.", "Review: bad."]}), SERVING)
    assert rows.texts == ["Review: fine.", "Review: bad."] and rows.source == "'text' column"
    with pytest.raises(DataValidationError, match="lacks column 'review'.*no 'text' column"):
        prepare_rows(raw_rows(3).drop(columns=["review"]), SERVING)


def test_prepare_rows_bad_rows_drop_counts_and_error_names_row():
    df = raw_rows(6)
    df.loc[1, "review"] = "   "
    df.loc[2, "review"] = None
    df["channel"] = df["channel"].astype(object)
    df.loc[4, "channel"] = 7
    rows = prepare_rows(df, SERVING, "drop")
    assert rows.ids == ["r00000", "r00003", "r00005"]
    assert rows.counts == {"rows_in": 6, "rows_predicted": 3, "dropped_empty_text": 2, "dropped_non_string": 1}
    with pytest.raises(DataValidationError, match=r"row 1 \(id r00001\), column 'review': empty text"):
        prepare_rows(df, SERVING, "error")
    with pytest.raises(ConfigError):
        prepare_rows(df, SERVING, "skip")


def test_configs_reject_bad_values():
    with pytest.raises(ConfigError, match="predict.bad_rows"):
        PredictConfig(bad_rows="ignore")
    with pytest.raises(ConfigError, match="export.batch_size"):
        ExportConfig(batch_size=0)


def test_predict_handles_empty_and_all_bad_tables(exported):
    predictor = load_predictor(exported["merged"], device="cpu")
    out = predictor.predict(prepare_rows(pd.DataFrame({"text": ["", None]}), SERVING, "drop"))
    assert list(out.columns) == ["id", "label", "prob_negative", "prob_neutral", "prob_positive"] and len(out) == 0


# --- MLflow pyfunc: logged to a (training) run in a real sqlite store, loaded in a fresh process ---


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


def test_pyfunc_round_trip_equals_predict_node(exported, tmp_path, monkeypatch):
    import mlflow

    from toptune.pipelines.predict.nodes import predict

    info = log_to_training_run(tmp_path, exported["merged"], monkeypatch)
    assert info["logged_to"] == "training_run" and info["model_uri"] == f"runs:/{info['run_id']}/model"
    assert info["registered_model"] == "toptune-classifier" and info["version"] == 1
    raw = raw_rows(24)
    raw.loc[5, "review"] = ""  # the pyfunc default (export.bad_rows=error) refuses it; drop skips it
    raw.to_csv(tmp_path / "input.csv", index=False)
    code = textwrap.dedent(f"""
        import json, mlflow, pandas as pd
        df = pd.read_csv({str(tmp_path / "input.csv")!r})  # the table's columns, label column included
        model, out = mlflow.pyfunc.load_model({info["model_uri"]!r}), {{}}
        try:
            model.predict(df)
        except mlflow.exceptions.MlflowException as e:
            out["error"] = str(e)
        out["drop"] = model.predict(df, params={{"bad_rows": "drop", "batch_size": 7}}).to_dict("list")
        out["text"] = model.predict(pd.DataFrame({{"text": ["Review: good."]}})).to_dict("list")
        sig = model.metadata.signature
        out["inputs"], out["outputs"] = sig.inputs.input_names(), sig.outputs.input_names()
        print(json.dumps(out))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    expected, stats = predict(raw, str(exported["merged"]), {"bad_rows": "drop", "progress": False})
    assert stats["dropped_empty_text"]["value"] == 1 and len(expected) == 23
    pyfunc = pd.DataFrame(got["drop"])
    assert pyfunc["id"].tolist() == expected["id"].tolist()
    assert pyfunc["label"].tolist() == expected["label"].tolist()
    probs = [c for c in expected.columns if c.startswith("prob_")]
    np.testing.assert_allclose(pyfunc[probs].to_numpy(), expected[probs].to_numpy(), atol=1e-5)
    assert "row 5 (id r00005), column 'review': empty text" in got["error"]
    assert got["inputs"] == ["id", "product", "channel", "review", "text"]
    assert got["outputs"] == ["id", "label", "prob_negative", "prob_neutral", "prob_positive"]
    version = mlflow.MlflowClient().get_model_version("toptune-classifier", "1")
    assert version.run_id == info["run_id"]
    assert got["text"]["id"] == ["0"] and got["text"]["label"][0] in ID2LABEL.values()
