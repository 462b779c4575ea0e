"""Bad input, as a hostile user brings it: every case gets one clear line naming the parameter, column
or file (and the fix), or a counted drop, never a wrong result without a word. docs/reference/errors.md
lists the same cases.

Most cases are pure checks on real objects (parameters, tables, files, bundles); the Kedro sessions at
the end run the real pipelines on a tiny Qwen3 into a real sqlite MLflow store.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pydantic
import pytest
import torch
import yaml
from kedro.io import DatasetError
from kedro_datasets.pandas import CSVDataset
from safetensors.torch import load_file, save_file

from support.export import make_export, raw_rows, use_store
from support.project import make_project, nested, run
from toptune.config import STRICT, ConfigError, DataConfig, ModelConfig, parse_group, parse_params
from toptune.data.prepare import texts_table
from toptune.data.split import split_rows
from toptune.data.table import DataValidationError
from toptune.data.tokens import encode
from toptune.evaluate.health import dropped_rows_warnings, short_text_warnings, training_warnings
from toptune.integrations.cli import one_line
from toptune.integrations.guards import mark_dead_runs
from toptune.io.atomic import temp_path
from toptune.io.debris import clear_debris, hostname
from toptune.io.lock import ProjectBusyError, ProjectLock, takes_lock
from toptune.model.preflight import check_model
from toptune.serve.bundle import BUNDLE_FILE, BundleError, check_base, read_bundle
from toptune.serve.predict import (
    ServingConfig,
    load_predictor,
    prepare_rows,
    request_params,
)
from toptune.task import MULTI, Task, class_weights

ROOT = Path(__file__).resolve().parents[2]
CFG = DataConfig(  # blank cells drop their row: the bad-row cases below
    text_template="Product: {product}\nReview: {review}",
    label_column="sentiment",
    min_class_rows=3,
    missing_fields="drop",
)


def table(n_per_class: int = 10) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"id": f"r{c}{i}", "product": f"p{i}", "review": f"review {c} number {i}", "sentiment": c}
            for c in ("negative", "neutral", "positive")
            for i in range(n_per_class)
        ]
    )


def dead_pid() -> int:
    """The pid of a process that has exited."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# --- 1. parameters: groups, keys, types, ranges (checked from the dataclasses) --------------------

PARAMETER_CASES = [
    ({"training": {"lr": "abc"}}, "training.lr='abc' must be a number, not a string"),
    ({"training": {"epochs": 1.5}}, "training.epochs=1.5 must be an integer, not a number"),
    (
        {"model": {"trainable_layers": True}},
        "model.trainable_layers=True must be an integer or a list of integers, not a bool",
    ),
    ({"model": {"trainable_layers": [5, True]}}, "model.trainable_layers=[5, True] must be"),
    ({"trainig": {"epochs": 50}}, "unknown parameter group 'trainig' (did you mean 'training'?)"),
    ({"training": {"epoch": 5}}, "unknown parameter training.epoch (did you mean training.epochs?)"),
    ({"training": 5}, "parameter group 'training' must be a mapping of keys"),
    ({"training": {"progress": "yes"}}, "training.progress='yes' must be true or false"),
    ({"training": {"lr": 0}}, "training.lr=0.0 must be > 0"),
    ({"training": {"epochs": 0}}, "training.epochs=0 must be >= 1"),
    ({"training": {"prefix_mode": "fast"}}, "training.prefix_mode='fast' must be one of"),
    ({"data": {"val_fraction": 0.6}}, "data.val_fraction=0.6 must be in (0, 0.5)"),
    ({"data": {"bad_rows": "skip"}}, "data.bad_rows='skip' must be 'drop' or 'error'"),
    ({"data": {"sample_rows": 0}}, "data.sample_rows must be > 0 or null"),
    ({"data": {"label_column": 3}}, "data.label_column=3 must be a string, not an integer"),
    (
        {"lora": {"target_modules": "q_proj"}},
        "lora.target_modules='q_proj' must be auto or a non-empty list of module names",
    ),
    ({"predict": {"batch_size": 0}}, "predict.batch_size=0 must be >= 1"),
    ({"export": {"bad_rows": "ignore"}}, "export.bad_rows='ignore' must be 'drop' or 'error'"),
    ({"inspect": {"modes": ["nope"]}}, "inspect.modes: unknown mode 'nope'"),
]


@pytest.mark.parametrize("params,message", PARAMETER_CASES, ids=[m.split(" ")[0] for _, m in PARAMETER_CASES])
def test_bad_parameter_is_one_line_naming_it(params, message):
    with pytest.raises(ConfigError) as e:
        parse_params(params)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_new_field_is_checked_without_new_check_code():
    @pydantic.dataclasses.dataclass(config=STRICT)
    class Later:  # fields a later feature adds to training.*
        checkpoint_every: int = 0
        resume: str = "auto"
        early_stopping_patience: int | None = None

    assert (
        parse_group(Later, {"checkpoint_every": 5, "early_stopping_patience": None}, "training").checkpoint_every == 5
    )
    with pytest.raises(ConfigError, match=re.escape("training.checkpoint_every='5' must be an integer, not a string")):
        parse_group(Later, {"checkpoint_every": "5"}, "training")
    with pytest.raises(ConfigError, match=re.escape("training.early_stopping_patience=2.5 must be an integer or null")):
        parse_group(Later, {"early_stopping_patience": 2.5}, "training")


def test_good_parameters_pass_and_ints_are_numbers():
    configs = parse_params(yaml.safe_load((ROOT / "conf/base/parameters.yml").read_text()) | {"training": {"lr": 1}})
    assert configs.training.lr == 1.0 and isinstance(configs.training.lr, float)


# --- 2. the model's source, read (not loaded) ----------------------------------------------------


def test_missing_model_directory_names_it():
    with pytest.raises(ConfigError, match=re.escape("model.name_or_path=/no/such/dir: no such directory")):
        check_model(ModelConfig(name_or_path="/no/such/dir"))


def test_trainable_layers_checked_against_config_json(tiny_qwen3):
    with pytest.raises(
        ConfigError, match=r"model.trainable_layers=99 exceeds the model's 4 blocks .*num_hidden_layers=4"
    ):
        check_model(ModelConfig(name_or_path=str(tiny_qwen3), trainable_layers=99))
    with pytest.raises(ConfigError, match=r"model.trainable_layers has block 7; the model has blocks 0..3"):
        check_model(ModelConfig(name_or_path=str(tiny_qwen3), trainable_layers=[1, 7]))
    assert check_model(ModelConfig(name_or_path=str(tiny_qwen3), trainable_layers=2)) == [2, 3]


def test_composite_config_keeps_layers_in_text_config(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "qwen3_5", "text_config": {"num_hidden_layers": 6}})
    )
    save_file({"w": torch.zeros(1)}, tmp_path / "model.safetensors")
    assert check_model(ModelConfig(name_or_path=str(tmp_path), trainable_layers=6)) == list(range(6))
    with pytest.raises(ConfigError, match="exceeds the model's 6 blocks"):
        check_model(ModelConfig(name_or_path=str(tmp_path), trainable_layers=7))


def test_pickle_only_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3", "num_hidden_layers": 4}))
    torch.save({"w": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"model.name_or_path=.*only pickle weights \(pytorch_model.bin\)"):
        check_model(ModelConfig(name_or_path=str(tmp_path)))


def test_hub_id_without_local_copy_is_checked_when_it_loads():
    assert check_model(ModelConfig(name_or_path="Qwen/No-Such-Model-0B", trainable_layers=99)) is None


# --- 3. data semantics: one rule everywhere, every drop counted -----------------------------------


def test_integer_labels_with_a_blank_stay_as_written(tmp_path):
    df = table()
    df["sentiment"] = df["sentiment"].map({"negative": "1", "neutral": "2", "positive": "3"})
    df.loc[4, "sentiment"] = ""
    df.to_csv(tmp_path / "t.csv", index=False)
    raw = pd.read_csv(tmp_path / "t.csv")
    assert raw["sentiment"].dtype == float  # what pandas makes of it
    kept, quality = texts_table(raw, CFG)
    assert sorted(kept["label"].unique()) == ["1", "2", "3"] and quality["dropped_nan_label"] == 1


def test_text_labels_are_kept_as_written():
    df = table().assign(sentiment=lambda d: d["sentiment"].map({"negative": "01", "neutral": "02", "positive": "10"}))
    assert sorted(texts_table(df, CFG)[0]["label"].unique()) == ["01", "02", "10"]


def test_numbers_in_a_mostly_numeric_text_column_are_dropped_in_training_and_predict_alike():
    df = table().astype(object)
    numeric = list(range(0, 30, 3)) + list(range(1, 30, 3))  # 20 of 30 cells are numbers
    for i in numeric:
        df.loc[i, "review"] = 12345 + i
    kept, quality = texts_table(df, CFG)
    assert quality["dropped_non_string"] == 20 and not kept["text"].str.contains("12345").any()
    rows = prepare_rows(df, ServingConfig(CFG.text_template, 32, "id"), "drop")
    assert rows.counts["dropped_non_string"] == 20 and len(rows.texts) == 10


def test_a_template_column_without_text_names_the_catalog_fix():
    df = table().assign(review=range(30))
    with pytest.raises(
        DataValidationError,
        match=r"column 'review' of data.text_template holds no text \(int64 values\).*"
        r"load_args: \{dtype: \{review: str\}\}",
    ):
        texts_table(df, CFG)


def test_every_drop_is_counted_sample_rows_cap_included():
    df = pd.concat([table(20), table(20).iloc[[0, 1]]], ignore_index=True)  # 62 rows: 2 duplicates
    df.loc[5, "review"] = None  # 1 empty text
    q = texts_table(df, dataclasses.replace(CFG, sample_rows=30))[1]
    assert (q["dropped_duplicates"], q["dropped_empty_text"]) == (2, 1)
    assert q["dropped_sample_rows"] == (62 - 2 - 1) - 30 and q["rows_valid"] == 30  # 10 per class
    assert q["rows_in"] == q["rows_valid"] + sum(v for k, v in q.items() if k.startswith("dropped_"))


def test_split_too_small_for_the_fractions_names_the_fraction():
    small = texts_table(table(10), dataclasses.replace(CFG, test_fraction=0.05))[0]
    names = sorted(small["label"].unique())
    codes = small["label"].map(names.index).to_numpy()
    with pytest.raises(
        DataValidationError, match=re.escape("data.test_fraction=0.05 of 30 valid rows gives 2 test rows for 3 classes")
    ):
        split_rows(codes, dataclasses.replace(CFG, test_fraction=0.05), 0, names)


@pytest.mark.parametrize(
    "df,cfg,message",
    [
        (table().iloc[:0], CFG, "raw_data is empty"),
        (table().drop(columns="sentiment"), CFG, "data.label_column='sentiment': the table has no such column"),
        (table().drop(columns="review"), CFG, "data.text_template uses column 'review', which the table lacks"),
        (table(), DataConfig(text_template="{}"), "data.text_template must use named fields"),
        (table().assign(sentiment="positive"), CFG, "fewer than 2 classes have >= 3 valid rows"),
        (
            table().assign(review=lambda d: d["review"].where(d.index != 7, " ")),
            dataclasses.replace(CFG, bad_rows="error"),
            "raw_data row 7, column 'review': empty text (data.bad_rows=error)",
        ),
    ],
    ids=["empty", "no-label-column", "no-template-column", "positional-template", "one-class", "bad-row-error"],
)
def test_unusable_table_is_one_line(df, cfg, message):
    with pytest.raises(DataValidationError, match=re.escape(message)):
        texts_table(df, cfg)


# --- 3b. label kinds: cells a multi-label or regression column cannot hold --------------------------

MULTI_CFG = dataclasses.replace(CFG, problem_type="multi_label_classification")
REG_CFG = dataclasses.replace(CFG, problem_type="regression", label_column="score")


def kind_rows(labels: list, column: str = "sentiment") -> pd.DataFrame:
    return pd.DataFrame(
        [{"id": f"r{i}", "product": "p", "review": f"review number {i}", column: v} for i, v in enumerate(labels)]
    )


def test_multi_label_cells_of_separators_or_blanks_are_counted_drops():
    cells = ["a;b", "b", "a; c ", ";;", " ; ", "c;a", "b;c", "a"] * 3
    kept, quality = texts_table(kind_rows(cells), MULTI_CFG)
    assert quality["dropped_bad_label"] == 6 and quality["rows_valid"] == 18  # ";;" and " ; ", 3 times each
    assert set(kept["label"]) == {"a;b", "b", "a;c", "b;c", "a"}  # labels stripped, sorted, distinct
    with pytest.raises(DataValidationError, match=re.escape("raw_data row 3, column 'sentiment': ")):
        texts_table(kind_rows(cells), dataclasses.replace(MULTI_CFG, bad_rows="error"))


def test_a_list_written_as_text_in_a_csv_says_how_to_read_it():
    with pytest.raises(DataValidationError) as e:
        texts_table(kind_rows(["a", "['a', 'b']"] * 5), MULTI_CFG)
    msg = str(e.value)
    assert "row 1" in msg and "is a list written as text" in msg and "data.label_separator" in msg
    assert "Parquet" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "cells,message",
    [
        (["good", "fine", "bad"] * 10, "data.label_column='score' holds no numbers (e.g. 'good')"),
        ([4.5] * 30, "data.label_column='score' is constant (4.5 in every kept row)"),
    ],
    ids=["text-column", "constant"],
)
def test_a_regression_column_that_cannot_be_a_target_is_one_line(cells, message):
    with pytest.raises(DataValidationError, match=re.escape(message)):
        texts_table(kind_rows(cells, "score"), REG_CFG)


def test_regression_text_nan_and_inf_cells_are_counted_drops():
    cells = ["1.5", 2, "two", float("inf"), "-inf", " 3.25 ", float("nan"), 4.0] * 4
    kept, quality = texts_table(kind_rows(cells, "score"), REG_CFG)
    assert quality["dropped_bad_label"] == 12 and quality["dropped_nan_label"] == 4  # text, ±inf; NaN is blank
    assert sorted(set(kept["label"])) == ["1.5", "2.0", "3.25", "4.0"]
    with pytest.raises(DataValidationError, match=re.escape("raw_data row 2, column 'score': ")):
        texts_table(kind_rows(cells, "score"), dataclasses.replace(REG_CFG, bad_rows="error"))


@pytest.mark.parametrize(
    "params,message",
    [
        (
            {"data": {"problem_type": "regression"}, "training": {"class_weights": "balanced"}},
            "training.class_weights applies to classification; data.problem_type is regression",
        ),
        (
            {"data": {"problem_type": "regression"}, "training": {"thresholds": 0.3}},
            "training.thresholds applies to multi-label classification; data.problem_type is regression",
        ),
        (
            {"data": {"problem_type": "regression"}, "training": {"metric_for_best": "accuracy"}},
            "training.metric_for_best='accuracy' is not a regression metric (data.problem_type); choose one of",
        ),
        (
            {"training": {"regression_loss": "huber"}},
            "training.regression_loss applies to regression; data.problem_type is single_label_classification",
        ),
        ({"data": {"problem_type": "ordinal"}}, "data.problem_type='ordinal' must be one of"),
    ],
    ids=["weights-regression", "thresholds-regression", "metric-for-kind", "loss-classification", "kind"],
)
def test_a_parameter_the_kind_cannot_take_is_one_line(params, message):
    with pytest.raises(ConfigError) as e:
        parse_params(params)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_class_weights_naming_a_class_the_table_lacks_name_it():
    task = Task(MULTI, {0: "a", 1: "b"})
    with pytest.raises(ConfigError, match=re.escape("training.class_weights names class 'z', which the training")):
        class_weights({"a": 2.0, "z": 1.0}, task, np.array([3, 4]), 5)


# --- 4. a run that "succeeds" at nothing says so ----------------------------------------------


def test_rows_dropped_beyond_a_share_warn_naming_each_reason():
    q = {"rows_in": 1975, "dropped_empty_text": 928, "dropped_duplicates": 3, "dropped_sample_rows": 900}
    (message,) = dropped_rows_warnings(q).values()
    assert message.startswith("empty_text 928 (47.0%) of 1975 rows were dropped")
    assert "duplicates" not in message and "sample_rows" not in message  # 0.2 %; and the cap is asked for
    assert dropped_rows_warnings({"rows_in": 100, "dropped_nan_label": 5}) == {}  # 5 % is not more than 5 %


def test_texts_cut_to_one_token_warn(tokenizer):
    texts = texts_table(table(), CFG)[0]["text"].tolist()
    enc = encode(texts, tokenizer, max_length=1)
    (message,) = short_text_warnings({"train": (len(enc), enc.truncated)}, 1, 4, 0.1).values()
    assert "30 of 30 texts are cut to 1 token(s) by training.max_length=1" in message
    enc = encode(texts, tokenizer, max_length=128)
    assert short_text_warnings({"train": (len(enc), enc.truncated)}, 128, 4, 0.1) == {}


def test_chance_accuracy_and_divergence_warn():
    labels = np.repeat([0, 1, 2], 20)
    at_chance = {"epochs": [{"val_accuracy": 0.35}], "steps": [{"loss": 1.2}, {"loss": 1.0986}]}
    assert set(training_warnings(at_chance, labels, 3)) == {"chance_accuracy"}
    blown = {"epochs": [{"val_accuracy": 0.9}], "steps": [{"loss": 1.1}, {"loss": float("nan")}]}
    assert set(training_warnings(blown, labels, 3)) == {"loss_diverged"}
    assert "diverged" in training_warnings({"steps": [{"loss": 1.1}, {"loss": 40.0}]}, labels, 3)["loss_diverged"]
    assert (
        training_warnings({"epochs": [{"val_accuracy": 0.9}], "steps": [{"loss": 1.1}, {"loss": 0.2}]}, labels, 3) == {}
    )


# --- 5. input files that cannot be read: one line naming the file and the fix --------------------


def load_error(path: Path, **kwargs) -> BaseException:
    with pytest.raises(DatasetError) as e:
        CSVDataset(filepath=str(path), **kwargs).load()
    return e.value


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "zero.csv: the file is empty"),
        (
            "id,review\n1,gr\u00e9p\n".encode("latin-1"),
            "it is not utf-8 text (byte 0xe9); name its encoding in the catalog entry: load_args: {encoding: latin-1}",
        ),
        (
            b"a,b\n1,2\n3,4,5\n",
            "not a well-formed table (Error tokenizing data. C error: Expected 2 fields in line 3, saw 3)",
        ),
    ],
    ids=["zero-byte", "latin-1", "malformed"],
)
def test_unreadable_file_is_one_line(tmp_path, content, message):
    (tmp_path / "zero.csv").write_bytes(content)
    line = one_line(load_error(tmp_path / "zero.csv"))
    assert message in line and str(tmp_path / "zero.csv") in line and "\n" not in line


def test_missing_file_and_unexpected_errors(tmp_path):
    assert "no such file" in one_line(load_error(tmp_path / "nope.csv"))
    assert one_line(RuntimeError("a bug")) is None  # unexpected: keeps its traceback
    try:
        try:
            raise ConfigError("training.lr='abc' must be a number")
        except ConfigError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert one_line(outer) == "training.lr='abc' must be a number"


# --- 6. bundles: one model, one bundle; parts that disagree are refused ---------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_qwen3):
    return make_export(tmp_path_factory.mktemp("bundle"), tiny_qwen3)


def copy_of(path: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(path, tmp_path / path.name))


def test_bundle_without_manifest_is_refused(exported, tmp_path):
    adapter = copy_of(exported["adapter"], tmp_path)
    (adapter / BUNDLE_FILE).unlink()
    with pytest.raises(BundleError, match="is not an adapter bundle .toptune.json is missing.: run `kedro run`"):
        read_bundle(adapter, "adapter")


def test_mixed_adapter_bundle_is_refused(exported, tmp_path):
    adapter = copy_of(exported["adapter"], tmp_path)
    manifest = json.loads((adapter / BUNDLE_FILE).read_text())
    (adapter / BUNDLE_FILE).write_text(json.dumps({**manifest, "id2label": {"0": "1", "1": "2"}}))
    with pytest.raises(BundleError, match="the score head has 3 classes, toptune.json has 2: the bundle is mixed"):
        read_bundle(adapter, "adapter")
    (adapter / BUNDLE_FILE).write_text(json.dumps(manifest))
    with open(adapter / "adapter_model.safetensors", "ab") as f:
        f.write(b" ")
    with pytest.raises(BundleError, match="adapter_model.safetensors is not the file toptune.json was written with"):
        read_bundle(adapter, "adapter")


def test_mixed_merged_bundle_is_refused(exported, tmp_path):
    merged = copy_of(exported["merged"], tmp_path)
    config = json.loads((merged / "config.json").read_text())
    (merged / "config.json").write_text(json.dumps({**config, "id2label": {"0": "a", "1": "b", "2": "c"}}))
    with pytest.raises(BundleError, match=r"config.json labels \['a', 'b', 'c'\] differ from toptune.json's"):
        load_predictor(merged)


def test_changed_base_model_is_refused(exported, tiny_qwen3, tmp_path):
    bundle = read_bundle(exported["adapter"], "adapter")
    base = copy_of(tiny_qwen3, tmp_path)
    check_base(bundle, base)
    weights = load_file(base / "model.safetensors")
    next(iter(weights.values())).add_(1.0)
    save_file(weights, base / "model.safetensors")
    with pytest.raises(BundleError, match="its weights changed since the adapter was trained"):
        check_base(bundle, base)


# --- 7. the served model: request parameters, no stack trace in a response ------------------------


@pytest.mark.parametrize(
    "params,message",
    [
        ({"batch_size": -1}, "params.batch_size=-1 must be an integer >= 1"),
        ({"batch_size": 0}, "params.batch_size=0 must be an integer >= 1"),
        ({"batch_size": True}, "params.batch_size=True must be an integer >= 1"),
        ({"batch_size": 2.5}, "params.batch_size=2.5 must be an integer >= 1"),
        ({"bad_rows": "skip"}, "params.bad_rows='skip' must be 'drop' or 'error'"),
        ({"batch": 3}, "params.batch is not a parameter of this model"),
    ],
    ids=["negative", "zero", "bool", "float", "policy", "unknown"],
)
def test_bad_request_parameter_names_it(params, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        request_params(params, {"bad_rows": "error", "batch_size": 64})
    assert request_params({"batch_size": 3}, {"bad_rows": "error"}) == ("error", 3)


def test_server_fault_answers_an_error_id_not_a_trace(exported, caplog):
    from mlflow.exceptions import MlflowException

    from toptune.integrations.pyfunc import ToptuneClassifierModel

    model = ToptuneClassifierModel()
    model.predictor, model.defaults = load_predictor(exported["merged"], device="cpu"), {}
    with pytest.raises(MlflowException) as e:
        model.predict(None, raw_rows(2), {"batch_size": 0})
    assert e.value.get_http_status_code() == 400 and "params.batch_size=0" in e.value.message
    model.predictor.model.config.pad_token_id = None  # a fault inside the server: padding cannot be built
    with pytest.raises(MlflowException) as e:
        model.predict(None, raw_rows(2))
    error_id = re.fullmatch(r"internal error ([0-9a-f]{12}): see the server log", e.value.message).group(1)
    assert e.value.get_http_status_code() == 500 and "stack_trace" not in e.value.serialize_as_json()
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)


def test_catalog_holds_no_pickle():
    types = [
        str(v.get("type", "")) + str(v.get("dataset", {}).get("type", "") if isinstance(v.get("dataset"), dict) else "")
        for f in (ROOT / "conf/base").glob("catalog*.yml")
        for v in yaml.safe_load(f.read_text()).values()
    ]
    assert types and not any("pickle" in t.lower() for t in types)
    assert "TokenisedDataset" in " ".join(types)


def test_tokenised_splits_round_trip_through_the_store(tmp_path, tokenizer):
    from toptune.integrations.datasets import TokenisedDataset

    splits = {
        "train": encode(["one two three four", "five"], tokenizer, 3, labels=[0, 1], ids=["a", "b"]),
        "val": encode(["six seven"], tokenizer, 3, labels=[1], ids=["c"]),
    }
    ds = TokenisedDataset(str(tmp_path / "tokenised"))
    ds.save(splits)
    assert sorted(p.name for p in (tmp_path / "tokenised").iterdir()) == ["store.json", "train", "val"]
    assert sorted(p.name for p in (tmp_path / "tokenised" / "train").iterdir()) == [
        "ids.arrow",
        "labels.int32",
        "offsets.int64",
        "tokens.int32",
    ]  # raw arrays and Arrow: nothing executes on load
    back = ds.load()
    for name, enc in splits.items():
        got = back[name]
        assert isinstance(got.tokens, np.memmap) and got.id_list() == enc.id_list() and got.truncated == enc.truncated
        np.testing.assert_array_equal(got.offsets, enc.offsets)
        np.testing.assert_array_equal(got.tokens, enc.tokens)
        np.testing.assert_array_equal(got.labels, enc.labels)
        assert got.digest == enc.tokens_digest()  # stored while writing = computed from the arrays
    assert splits["train"].truncated == 1


# --- 8. faults leave no debris; one run at a time --------------------------------------------------


def test_debris_of_dead_processes_is_cleared(tmp_path):
    here, dead, live = hostname(), dead_pid(), os.getppid()
    kept = [f".prefix_cache.tmp-{here}-{live}", f".adapter.tmp-elsewhere-{dead}"]  # alive; another machine's
    for name in (
        *kept,
        f".prefix_cache.tmp-{here}-{dead}",
        f".adapter.old-{here}-{dead}",
        f".merged.old-{here}-{dead}",
        f".checkpoints.tmp-{dead}",
    ):  # the last: an older version's name, without the host
        (tmp_path / name).mkdir()
    (tmp_path / f".manifest.json.tmp-{here}-{dead}").write_text("{")  # a file's debris too
    (tmp_path / "merged").mkdir()
    done = clear_debris(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "adapter", "merged"])
    assert f"restored {tmp_path / 'adapter'} from .adapter.old-{here}-{dead}" in done and len(done) == 5
    assert temp_path(tmp_path / "adapter").name == f".adapter.tmp-{here}-{os.getpid()}"


@pytest.mark.slow
def test_dead_runs_are_marked_killed(tmp_path, monkeypatch):
    use_store(tmp_path, monkeypatch)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("toptune").experiment_id
    tags = {"toptune.host": hostname(), "toptune.project": "/p"}
    runs = {
        name: client.create_run(exp, tags={**tags, **extra}).info.run_id
        for name, extra in {
            "dead": {"toptune.pid": str(dead_pid())},
            "alive": {"toptune.pid": str(os.getpid())},
            "other_host": {"toptune.pid": str(dead_pid()), "toptune.host": "elsewhere"},
            "other_project": {"toptune.pid": str(dead_pid()), "toptune.project": "/q"},
        }.items()
    }
    assert mark_dead_runs(exp, "/p", keep="") == [runs["dead"]]
    status = {name: client.get_run(rid).info.status for name, rid in runs.items()}
    assert status == {"dead": "KILLED", "alive": "RUNNING", "other_host": "RUNNING", "other_project": "RUNNING"}


HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from toptune.io.lock import ProjectLock
    ProjectLock(sys.argv[1]).acquire("kedro run --pipelines __default__")
    print("held", flush=True)
    time.sleep(600)
""")


def hold_lock(project: Path) -> subprocess.Popen:
    """Another process holding the project's lock, as a running `kedro run` does."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(project)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_lock_refuses_a_second_run_and_is_taken_over_from_a_dead_one(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(
            ProjectBusyError,
            match=rf"another toptune run is using this project \(pid {holder.pid}, "
            r"kedro run --pipelines __default__, since",
        ):
            ProjectLock(tmp_path).acquire("second")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    lock = ProjectLock(tmp_path)
    lock.acquire("after a kill -9")  # the kernel dropped the dead process's lock
    lock.release()
    assert takes_lock({}) and takes_lock({"RANK": "0"}) and not takes_lock({"RANK": "1"})


# --- 9. real Kedro sessions -------------------------------------------------------------------------

QUICK = {"data.sample_rows": 60, "training.epochs": 1, "training.progress": False, "export.check_rows": 8}


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return make_project(tmp_path)


def runs_of(project: Path) -> list:
    if not (project / "mlflow.db").is_file():
        return []
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("toptune")
    return mlflow.search_runs([exp.experiment_id], output_format="list") if exp else []


@pytest.mark.slow
def test_misspelt_group_stops_before_any_work(project):
    (project / "conf/local/parameters.yml").write_text("trainig: {epochs: 50}\n")
    with pytest.raises(ConfigError, match="unknown parameter group 'trainig'"):
        run(project, {})
    assert runs_of(project) == [] and not any((project / "data").glob("0[2-8]_*/*"))


@pytest.mark.slow
def test_cli_prints_one_line_and_logs_the_trace(project):
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    kedro = str(Path(sys.executable).parent / "kedro")
    out = subprocess.run(
        [kedro, "run", "--params", "training.lr=abc"], capture_output=True, text=True, cwd=project, env=env, timeout=300
    )
    text = out.stdout + out.stderr
    last = [line for line in text.splitlines() if line.strip()][-1]
    assert out.returncode == 1 and "Traceback" not in text, text[-3000:]
    assert last.startswith("toptune: training.lr='abc' must be a number") and last.endswith("(full trace: toptune.log)")
    assert "Traceback" in (project / "toptune.log").read_text()


def label_map_artifact(run) -> set[str]:
    path = Path(run.info.artifact_uri.removeprefix("file://")) / "data" / "label_map.json"
    return set(json.loads(path.read_text()).values())


def f1_classes(run) -> set[str]:
    return {k.removeprefix("test.f1_") for k in run.data.metrics if k.startswith("test.f1_")}


@pytest.mark.slow
def test_failed_run_keeps_the_old_model_and_concurrent_runs_never_mix(project, tiny_qwen3):
    quick = {**QUICK, "model.name_or_path": str(tiny_qwen3)}
    run(project, quick)  # table A: negative / neutral / positive
    adapter = project / "data/06_models/adapter"
    before = json.loads((adapter / BUNDLE_FILE).read_text())

    # Table B (integer labels, one blank) in its own environment; the run fails after the data nodes
    # rewrote label_map.json (its prefix cache directory cannot be created: the path runs through a file).
    raw = pd.read_csv(project / "data/01_raw/reviews.csv")
    raw["sentiment"] = raw["sentiment"].map({"negative": "1", "neutral": "2", "positive": "3"})
    raw.loc[5, "sentiment"] = ""
    raw.to_csv(project / "data/01_raw/ints.csv", index=False)
    (project / "conf/b").mkdir()
    (project / "conf/b/catalog.yml").write_text(
        "raw_data:\n  type: pandas.CSVDataset\n  filepath: data/01_raw/ints.csv\n"
    )
    failing = {**quick, "training.prefix_mode": "cache", "training.cache_dir": "data/01_raw/ints.csv/cache"}
    with pytest.raises(OSError):
        run_env(project, failing, "b")
    assert set(json.loads((project / "data/02_intermediate/label_map.json").read_text()).values()) == {"1", "2", "3"}
    assert json.loads((adapter / BUNDLE_FILE).read_text()) == before  # the old model, whole
    assert not list((project / "data/06_models").glob(".adapter.*"))
    run(project, quick, "export")
    merged = json.loads((project / "data/06_models/merged/config.json").read_text())
    assert sorted(merged["id2label"].values()) == ["negative", "neutral", "positive"]

    # While another run holds the project, a second one is refused before any work; then it runs.
    holder = hold_lock(project)
    try:
        n = len(runs_of(project))
        with pytest.raises(ProjectBusyError, match=rf"pid {holder.pid}"):
            run_env(project, quick, "b")
        assert len(runs_of(project)) == n
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    run_env(project, quick, "b")
    finished = [r for r in runs_of(project) if r.info.status == "FINISHED" and f1_classes(r)]
    assert sorted(sorted(f1_classes(r)) for r in finished) == [["1", "2", "3"], ["negative", "neutral", "positive"]]
    assert all(label_map_artifact(r) == f1_classes(r) for r in finished)
    assert sorted(json.loads((adapter / BUNDLE_FILE).read_text())["id2label"].values()) == ["1", "2", "3"]


def run_env(project: Path, params: dict, env: str):
    """``run`` in Kedro environment ``env``."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env, runtime_params=nested(params)) as session:
        return session.run()
