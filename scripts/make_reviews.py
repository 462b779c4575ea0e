"""Write the bundled default table, ``data/01_raw/reviews.csv``: seeded, synthetic product reviews.

Each review is one or two clauses about a product's aspects. A clause is "the <aspect> is <adj>"
or its negation "the <aspect> is not <adj>" (negation flips the adjective's polarity). Labels:

- one clause: its polarity (``positive`` / ``negative``);
- "<clause>, but <clause>" (opposite polarities): the polarity of the *second* clause, so word
  order decides ("fast but loud" is negative, "loud but fast" positive);
- "<clause> and <clause>": the shared polarity when both agree, ``neutral`` when they differ.

No single keyword predicts the label: every adjective appears in every class, negated or not,
first or second. ``product`` and ``channel`` columns are independent of the label (noise the
template still serialises). Run ``python scripts/make_reviews.py [--rows N] [--seed S] [--out P]``.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

PRODUCTS = {
    "headphones": ["sound", "battery", "fit", "cable", "microphone", "case"],
    "laptop": ["screen", "keyboard", "battery", "fan", "trackpad", "speaker"],
    "blender": ["motor", "jar", "lid", "blade", "switch", "base"],
    "backpack": ["zipper", "strap", "fabric", "pocket", "frame", "buckle"],
    "camera": ["lens", "shutter", "grip", "menu", "flash", "sensor"],
    "kettle": ["handle", "spout", "lid", "base", "switch", "filter"],
}
POSITIVE = ["great", "excellent", "reliable", "sturdy", "quiet", "comfortable", "fast", "solid"]
NEGATIVE = ["awful", "flimsy", "noisy", "slow", "broken", "cheap", "loose", "terrible"]
CHANNELS = ["web", "store", "phone", "app"]
LABELS = ("negative", "neutral", "positive")


def clause(rng: random.Random, aspect: str, polarity: int) -> str:
    """A clause about ``aspect`` whose meaning has ``polarity`` (+1 / -1), negated half the time."""
    negated = rng.random() < 0.5
    # A negated clause needs the adjective of the opposite polarity ("not slow" is positive).
    adj_polarity = -polarity if negated else polarity
    adj = rng.choice(POSITIVE if adj_polarity > 0 else NEGATIVE)
    return f"the {aspect} is {'not ' if negated else ''}{adj}"


def review(rng: random.Random, product: str) -> tuple[str, str]:
    """One review text and its label."""
    a1, a2 = rng.sample(PRODUCTS[product], 2)
    shape = rng.choice(["single", "but", "and_same", "and_mixed"])
    p1 = rng.choice([1, -1])
    if shape == "single":
        return clause(rng, a1, p1).capitalize() + ".", LABELS[p1 + 1]
    if shape == "but":
        text = f"{clause(rng, a1, p1)}, but {clause(rng, a2, -p1)}"
        return text.capitalize() + ".", LABELS[-p1 + 1]
    p2 = p1 if shape == "and_same" else -p1
    text = f"{clause(rng, a1, p1)} and {clause(rng, a2, p2)}"
    return text.capitalize() + ".", LABELS[p1 + 1] if p1 == p2 else "neutral"


def make_rows(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` distinct rows (duplicates are redrawn, so the table passes validation as is)."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        product = rng.choice(sorted(PRODUCTS))
        text, label = review(rng, product)
        channel = rng.choice(CHANNELS)
        if (product, channel, text) in seen:
            continue
        seen.add((product, channel, text))
        rows.append(
            {"id": f"r{len(rows):05d}", "product": product, "channel": channel, "review": text, "sentiment": label}
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=6000, help="number of rows (default 6000)")
    ap.add_argument("--seed", type=int, default=13, help="random seed (default 13)")
    ap.add_argument("--out", type=Path, default=Path("data/01_raw/reviews.csv"), help="output CSV")
    args = ap.parse_args()
    rows = make_rows(args.rows, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
