"""Tables made from the bundled reviews for data-side tests: one with every kind of bad row."""

from __future__ import annotations

import numpy as np
import pandas as pd


def rough_reviews(df: pd.DataFrame) -> pd.DataFrame:
    """The bundled reviews with, deterministically: duplicated rows, blank and non-string text cells,
    blank labels, a class too small to split, and a text repeated under another label."""
    df = df.copy().astype(object)
    rng = np.random.default_rng(7)
    dup = df.iloc[rng.choice(len(df), 40, replace=False)]
    df = pd.concat([df, dup], ignore_index=True)
    df.loc[rng.choice(len(df), 15, replace=False), "review"] = np.nan
    df.loc[rng.choice(len(df), 5, replace=False), "channel"] = "  "
    df.loc[rng.choice(len(df), 4, replace=False), "product"] = 7
    df.loc[rng.choice(len(df), 6, replace=False), "sentiment"] = np.nan
    small = df.iloc[:5].copy()
    small["sentiment"], small["id"] = "rare", [f"s{i}" for i in range(5)]
    clash = df.iloc[100:103].copy()
    clash["sentiment"], clash["id"] = "mixed", [f"c{i}" for i in range(3)]
    return pd.concat([df, small, clash], ignore_index=True)
