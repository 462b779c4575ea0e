"""Validation, serialisation, split, tokenise-once and collate, on real tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from toptune.config import ConfigError, DataConfig, parse_group
from toptune.data.batches import batches, collate
from toptune.data.table import (
    DataValidationError,
    label_map,
    prepare_table,
    split_table,
    template_columns,
    to_frame,
)
from toptune.data.tokens import encode

CFG = DataConfig(text_template="Product: {product}\nReview: {review}", label_column="sentiment", min_class_rows=3)


def table(n_per_class: int = 5) -> pd.DataFrame:
    rows = [
        {"id": f"r{c}{i}", "product": f"p{i}", "review": f"review {c} number {i}", "sentiment": c}
        for c in ("negative", "neutral", "positive")
        for i in range(n_per_class)
    ]
    return pd.DataFrame(rows)


def test_serialises_with_template_and_keeps_ids():
    prepared = prepare_table(table(), CFG)
    assert len(prepared.table) == 15 and prepared.quality["rows_valid"] == 15
    first = prepared.table.iloc[0]
    assert first["text"] == "Product: p0\nReview: review negative number 0" and first["id"] == "rnegative0"
    assert template_columns("{a} and {b.x} {a}") == ["a", "b"]


def test_missing_label_column_names_it():
    with pytest.raises(
        DataValidationError, match=r"data.label_column='sentiment'.*no such column.*columns: id, product, review"
    ):
        prepare_table(table().drop(columns="sentiment"), CFG)


def test_missing_template_column_names_it():
    with pytest.raises(DataValidationError, match=r"data.text_template uses column 'review'"):
        prepare_table(table().drop(columns="review"), CFG)


def test_bad_rows_are_dropped_and_counted():
    df = table().astype(object)  # mixed-type cells, as Parquet or a HF dataset can hold
    df.loc[0, "review"] = "   "  # empty text
    df.loc[5, "review"] = np.nan  # NaN text
    df.loc[10, "review"] = 12345  # non-string cell in a text column
    df.loc[1, "sentiment"] = np.nan  # NaN label
    df = pd.concat([df, df.iloc[[6, 7]]])  # two duplicate rows
    prepared = prepare_table(df, CFG)
    q = prepared.quality
    assert (q["dropped_empty_text"], q["dropped_non_string"], q["dropped_nan_label"], q["dropped_duplicates"]) == (
        2,
        1,
        1,
        2,
    )
    assert q["rows_in"] == 17 and q["rows_valid"] == 11 == len(prepared.table) and q["dropped_small_class"] == 0


def test_bad_rows_error_policy_names_row_and_column():
    df = table()
    df.loc[4, "review"] = None
    with pytest.raises(DataValidationError, match=r"row 4, column 'review': empty text"):
        prepare_table(df, DataConfig(**{**CFG.__dict__, "bad_rows": "error"}))


def test_small_classes_dropped_and_too_few_classes_fail():
    df = pd.concat([table(5), pd.DataFrame([{"id": "x", "product": "p", "review": "rare", "sentiment": "rare"}])])
    prepared = prepare_table(df, CFG)
    assert prepared.quality["dropped_small_class"] == 1 and set(prepared.table["label"]) == {
        "negative",
        "neutral",
        "positive",
    }
    with pytest.raises(DataValidationError, match="fewer than 2 classes"):
        prepare_table(table(5)[lambda d: d.sentiment == "neutral"], CFG)


def test_bad_parameters_name_the_parameter():
    with pytest.raises(ConfigError, match="data.bad_rows"):
        parse_group(DataConfig, {"bad_rows": "skip"}, "data")
    with pytest.raises(DataValidationError, match="named fields"):
        prepare_table(table(), DataConfig(text_template="{}", label_column="sentiment"))


def test_split_is_stratified_and_seeded():
    prepared = prepare_table(table(20), CFG)
    a, b = split_table(prepared.table, CFG, seed=1), split_table(prepared.table, CFG, seed=1)
    assert [len(a[s]) for s in ("train", "val", "test")] == [48, 6, 6]
    assert all(a[s]["id"].tolist() == b[s]["id"].tolist() for s in a)
    assert all(a[s]["label"].value_counts().nunique() == 1 for s in a)  # every class equally represented
    assert set().union(*(set(a[s]["id"]) for s in a)) == set(prepared.table["id"])


def test_hugging_face_and_parquet_tables(tmp_path):
    import datasets

    df = table()
    hf = to_frame(datasets.Dataset.from_pandas(df))
    dd = to_frame(
        datasets.DatasetDict(
            {"train": datasets.Dataset.from_pandas(df.iloc[:9]), "test": datasets.Dataset.from_pandas(df.iloc[9:])}
        )
    )
    df.to_parquet(tmp_path / "t.parquet")
    for other in (hf, dd, pd.read_parquet(tmp_path / "t.parquet")):
        assert prepare_table(other, CFG).table.equals(prepare_table(df, CFG).table)


def test_tokenise_once_truncates_and_counts(tokenizer):
    enc = encode(["one two three four five six seven eight", "short"], tokenizer, max_length=4, labels=[0, 1])
    assert [len(x) for x in enc.input_ids] == [4, 1] and enc.truncated == 1
    assert (
        enc.input_ids[0]
        == tokenizer("one two three four five six seven eight", add_special_tokens=False)["input_ids"][:4]
    )


def test_collate_pads_right_to_longest(tokenizer):
    b = collate([[5, 6, 7], [8]], [1, 0], tokenizer.pad_token_id)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 151643, 151643]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]] and b["labels"].tolist() == [1, 0]
    enc = encode(["a b c", "a", "a b c d e f"], tokenizer, 16, labels=[0, 1, 2])
    widths = [x["input_ids"].shape[1] for x in batches(enc, 2, tokenizer.pad_token_id)]
    assert widths == [max(len(enc.input_ids[0]), len(enc.input_ids[1])), len(enc.input_ids[2])]


def test_label_map_is_sorted():
    assert label_map(pd.Series(["pos", "neg", "pos", "mid"])) == {0: "mid", 1: "neg", 2: "pos"}
