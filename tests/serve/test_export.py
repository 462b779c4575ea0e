"""Export and predict: the merged model equals the adapter, loads without PEFT, and the MLflow
pyfunc model, the library and the ``predict`` node give the same predictions."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from support.export import (
    ID2LABEL,
    REVIEWS,
    SERVING,
    log_to_training_run,
    make_export,
    raw_rows,
)
from toptune.config import ConfigError, ExportConfig, PredictConfig, parse_group
from toptune.data.table import DataValidationError, render
from toptune.data.tokens import Encoded, encode
from toptune.serve.merge import load_trained
from toptune.serve.predict import (
    load_predictor,
    logits_of,
    prepare_rows,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_qwen3):
    return make_export(tmp_path_factory.mktemp("export"), tiny_qwen3)


def real_input_ids(tok, n: int = 16) -> Encoded:
    return encode(render(raw_rows(n), SERVING.text_template), tok, SERVING.max_length)


@pytest.mark.slow
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


@pytest.mark.slow
def test_merged_model_loads_without_peft(exported, tiny_qwen3, tmp_path):
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
        from toptune.data.tokens import from_rows
        enc = from_rows(tok(prepare_rows(rows, p.serving).texts, add_special_tokens=False)["input_ids"])
        print(json.dumps({{"id2label": m.config.id2label, "label2id": m.config.label2id, "pad": m.config.pad_token_id,
                          "arch": m.config.architectures,
                          "logits": logits_of(m, enc, m.config.pad_token_id, 4).tolist(),
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
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "toptune.json",
        "examples.json",
    } <= files
    assert "adapter_config.json" not in files


# --- predict-row validation (no model needed) ----------------------------------------------------


def test_prepare_rows_uses_template_ignores_label_and_keeps_ids():
    rows = prepare_rows(raw_rows(3), SERVING)
    assert rows.ids == ["r00000", "r00001", "r00002"] and rows.source == "template columns"
    assert (
        rows.texts[0] == "Product: camera\nChannel: phone\nReview: The grip is reliable, but the shutter is not sturdy."
    )
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
    drop = dataclasses.replace(SERVING, missing_fields="drop")  # the rule a model trained with it serves
    rows = prepare_rows(df, drop, "drop")
    assert rows.ids == ["r00000", "r00003", "r00005"]
    assert rows.counts == {"rows_in": 6, "rows_predicted": 3, "dropped_empty_text": 2, "dropped_non_string": 1}
    with pytest.raises(DataValidationError, match=r"row 1 \(id r00001\), column 'review': empty text"):
        prepare_rows(df, drop, "error")
    # fill (the default): a blank review renders empty beside the other columns; only the number is bad
    filled = prepare_rows(df, SERVING, "drop")
    assert filled.ids == ["r00000", "r00001", "r00002", "r00003", "r00005"]
    assert filled.texts[2].endswith("Review: ") and filled.counts["dropped_non_string"] == 1
    with pytest.raises(ConfigError):
        prepare_rows(df, SERVING, "skip")


def test_configs_reject_bad_values():
    with pytest.raises(ConfigError, match="predict.bad_rows"):
        parse_group(PredictConfig, {"bad_rows": "ignore"}, "predict")
    with pytest.raises(ConfigError, match="export.batch_size"):
        parse_group(ExportConfig, {"batch_size": 0}, "export")


@pytest.mark.slow
def test_predict_handles_empty_and_all_bad_tables(exported):
    predictor = load_predictor(exported["merged"], device="cpu")
    out = predictor.predict(prepare_rows(pd.DataFrame({"text": ["", None]}), SERVING, "drop"))
    assert list(out.columns) == ["id", "label", "prob_negative", "prob_neutral", "prob_positive"] and len(out) == 0


# --- MLflow pyfunc: logged to a (training) run in a real sqlite store, loaded in a fresh process ---


@pytest.mark.slow
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
    expected, stats = predict(raw, str(exported["merged"]), PredictConfig(bad_rows="drop", progress=False))
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
