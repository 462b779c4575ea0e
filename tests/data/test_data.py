"""Validation, serialisation, selection, split, tokenise-once and padding, on real tables (in memory; the
streamed token store: test_store.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from toptune.config import ConfigError, DataConfig, parse_group
from toptune.data.batches import batches, pad, rows_batch
from toptune.data.prepare import texts_table
from toptune.data.read import open_table
from toptune.data.split import split_rows
from toptune.data.table import DataValidationError, template_columns
from toptune.data.tokens import encode, from_rows

CFG = DataConfig(
    text_template="Product: {product}\nReview: {review}",
    label_column="sentiment",
    min_class_rows=3,
    missing_fields="drop",
)


def table(n_per_class: int = 5) -> pd.DataFrame:
    rows = [
        {"id": f"r{c}{i}", "product": f"p{i}", "review": f"review {c} number {i}", "sentiment": c}
        for c in ("negative", "neutral", "positive")
        for i in range(n_per_class)
    ]
    return pd.DataFrame(rows)


def test_serialises_with_template_and_keeps_ids():
    kept, quality = texts_table(table(), CFG)
    assert len(kept) == 15 and quality["rows_valid"] == 15
    first = kept.iloc[0]
    assert first["text"] == "Product: p0\nReview: review negative number 0" and first["id"] == "rnegative0"
    assert template_columns("{a} and {b.x} {a}") == ["a", "b"]


def test_missing_label_column_names_it():
    with pytest.raises(
        DataValidationError, match=r"data.label_column='sentiment'.*no such column.*columns: id, product, review"
    ):
        texts_table(table().drop(columns="sentiment"), CFG)


def test_missing_template_column_names_it():
    with pytest.raises(DataValidationError, match=r"data.text_template uses column 'review'"):
        texts_table(table().drop(columns="review"), CFG)


def test_bad_rows_are_dropped_and_counted():
    df = table().astype(object)  # mixed-type cells, as Parquet or a HF dataset can hold
    df.loc[0, "review"] = "   "  # empty text
    df.loc[5, "review"] = np.nan  # NaN text
    df.loc[10, "review"] = 12345  # non-string cell in a text column
    df.loc[1, "sentiment"] = np.nan  # NaN label
    df = pd.concat([df, df.iloc[[6, 7]]])  # two duplicate rows
    kept, q = texts_table(df, CFG)
    assert (q["dropped_empty_text"], q["dropped_non_string"], q["dropped_nan_label"], q["dropped_duplicates"]) == (
        2,
        1,
        1,
        2,
    )
    assert q["rows_in"] == 17 and q["rows_valid"] == 11 == len(kept) and q["dropped_small_class"] == 0


def test_missing_fields_fill_renders_blank_cells_and_counts_them():
    df = table().astype(object)
    df.loc[0, "review"] = "   "  # blank review, product given: kept, review empty
    df.loc[5, "product"] = np.nan  # blank product: kept
    df.loc[6, ["product", "review"]] = None  # nothing from any column: empty
    kept, q = texts_table(df, dataclasses.replace(CFG, missing_fields="fill"))
    assert q["dropped_empty_text"] == 1 and q["filled_missing_review"] == 1 and q["filled_missing_product"] == 1
    texts = dict(zip(kept["id"], kept["text"], strict=True))
    assert (
        texts["rnegative0"] == "Product: p0\nReview: "
        and texts["rneutral0"] == "Product: \nReview: review neutral number 0"
    )
    assert "rneutral1" not in texts and q["rows_valid"] == 14


def test_bad_rows_error_policy_names_row_and_column():
    df = table()
    df.loc[4, "review"] = None
    with pytest.raises(DataValidationError, match=r"row 4, column 'review': empty text"):
        texts_table(df, DataConfig(**{**CFG.__dict__, "bad_rows": "error"}))


def test_small_classes_dropped_and_too_few_classes_fail():
    df = pd.concat([table(5), pd.DataFrame([{"id": "x", "product": "p", "review": "rare", "sentiment": "rare"}])])
    kept, quality = texts_table(df, CFG)
    assert quality["dropped_small_class"] == 1 and set(kept["label"]) == {
        "negative",
        "neutral",
        "positive",
    }
    with pytest.raises(DataValidationError, match="fewer than 2 classes"):
        texts_table(table(5)[lambda d: d.sentiment == "neutral"], CFG)


def test_bad_parameters_name_the_parameter():
    with pytest.raises(ConfigError, match="data.bad_rows"):
        parse_group(DataConfig, {"bad_rows": "skip"}, "data")
    with pytest.raises(DataValidationError, match="named fields"):
        texts_table(table(), DataConfig(text_template="{}", label_column="sentiment"))


def test_split_is_stratified_and_seeded():
    kept, _ = texts_table(table(20), CFG)
    names = sorted(kept["label"].unique())
    codes = kept["label"].map(names.index).to_numpy()
    a, b, c = (split_rows(codes, CFG, seed, names) for seed in (1, 1, 2))
    assert [len(a[s]) for s in ("train", "val", "test")] == [48, 6, 6]
    assert all(np.array_equal(a[s], b[s]) for s in a) and not np.array_equal(a["train"], c["train"])
    assert all(len(set(np.bincount(codes[a[s]]))) == 1 for s in a)  # every class equally represented
    assert sorted(np.concatenate(list(a.values()))) == list(range(len(kept)))


def test_hugging_face_and_parquet_tables(tmp_path):
    import datasets

    df = table()
    hf = datasets.Dataset.from_pandas(df)
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_pandas(df.iloc[:9]), "test": datasets.Dataset.from_pandas(df.iloc[9:])}
    )
    shuffled = datasets.Dataset.from_pandas(df.iloc[::-1].reset_index(drop=True)).select(range(14, -1, -1))
    df.to_parquet(tmp_path / "t.parquet")
    df.to_csv(tmp_path / "t.csv", index=False)
    want = texts_table(df, CFG)[0]
    for other in (hf, dd, shuffled, open_table(tmp_path / "t.parquet"), open_table(tmp_path / "t.csv")):
        got = texts_table(other, CFG)[0]
        assert got.astype(str).equals(want.astype(str)), type(other).__name__


def test_tokenise_once_truncates_and_counts(tokenizer):
    enc = encode(["one two three four five six seven eight", "short"], tokenizer, max_length=4, labels=[0, 1])
    assert enc.lengths().tolist() == [4, 1] and enc.truncated == 1
    assert (
        enc.row(0).tolist()
        == tokenizer("one two three four five six seven eight", add_special_tokens=False)["input_ids"][:4]
    )


def test_rows_pad_right_to_longest_in_the_order_asked(tokenizer):
    enc = from_rows([[5, 6, 7], [8], [9, 10]], labels=[1, 0, 2])
    b = rows_batch(enc, np.array([1, 0]), tokenizer.pad_token_id)
    assert b["input_ids"].tolist() == [[8, 151643, 151643], [5, 6, 7]]
    assert b["attention_mask"].tolist() == [[1, 0, 0], [1, 1, 1]] and b["labels"].tolist() == [0, 1]
    flat, lengths = enc.gather(np.array([2, 2, 0]))
    assert flat.tolist() == [9, 10, 9, 10, 5, 6, 7] and lengths.tolist() == [2, 2, 3]
    ids, mask = pad(np.zeros(0, np.int32), np.zeros(0, np.int64), 0)
    assert ids.shape == mask.shape == (0, 0)
    enc = encode(["a b c", "a", "a b c d e f"], tokenizer, 16, labels=[0, 1, 2])
    widths = [x["input_ids"].shape[1] for x in batches(enc, 2, tokenizer.pad_token_id)]
    assert widths == [max(enc.lengths()[:2]), enc.lengths()[2]]


def test_labels_are_sorted_classes():
    df = table().assign(
        sentiment=lambda d: d["sentiment"].map({"negative": "pos", "neutral": "neg", "positive": "mid"})
    )
    kept, _ = texts_table(df, CFG)
    assert sorted(kept["label"].unique()) == ["mid", "neg", "pos"]
