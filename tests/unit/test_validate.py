import json

import numpy as np
import pandas as pd
import pytest

from dualtoken.curation.validate import validate_manifest

RULES = {"resolution": 64, "split_fractions": {"train": 0.8, "val": 0.1, "test": 0.1}, "split_tolerance": 0.05,
         "min_rows": 10, "max_rows": 10_000, "caption_min_chars": 3, "caption_max_chars": 50}


def _frame(n: int = 200) -> pd.DataFrame:
    splits = np.array(["train"] * 8 + ["val", "test"])[np.arange(n) % 10]
    return pd.DataFrame({
        "key": [f"k{i}" for i in range(n)], "split": splits, "shard": "train-000000.tar",
        "width": 64, "height": 64, "pixel_sha256": [f"{i:064x}" for i in range(n)], "phash": "0" * 16,
        "caption": [f"caption {i}" for i in range(n)], "caption_chars": [len(f"caption {i}") for i in range(n)],
        "n_captions": 1, "n_qa": 0, "source": "demo", "source_key": [str(i) for i in range(n)],
    })


def test_good_manifest_passes_and_result_is_json():
    outcome = validate_manifest(_frame(), **RULES)
    assert outcome.success, outcome.summary
    assert outcome.summary.startswith("all ") and "expectations passed" in outcome.summary
    json.dumps(outcome.result)


def _break(kind: str) -> pd.DataFrame:
    df = _frame()
    if kind == "duplicate key":
        df.loc[5, "key"] = "k4"
    elif kind == "duplicate pixels":
        df.loc[7, "pixel_sha256"] = df.loc[3, "pixel_sha256"]
    elif kind == "wrong width":
        df.loc[2, "width"] = 32
    elif kind == "null caption":
        df.loc[1, "caption"] = None
    elif kind == "caption too long":
        df.loc[0, "caption_chars"] = 999
    elif kind == "split fraction":
        df.loc[df["split"] == "val", "split"] = "train"
    elif kind == "too few rows":
        df = df.head(5)
    elif kind == "empty":
        df = df.head(0)
    return df


@pytest.mark.parametrize(("kind", "expect"), [
    ("duplicate key", ["expect_column_values_to_be_unique", "'key'", "k4"]),
    ("duplicate pixels", ["expect_column_values_to_be_unique", "'pixel_sha256'"]),
    ("wrong width", ["expect_column_values_to_be_between", "'width'", "[32]"]),
    ("null caption", ["expect_column_values_to_not_be_null", "'caption'"]),
    ("caption too long", ["'caption_chars'", "999"]),
    ("split fraction", ["expect_column_mean_to_be_between", "'is_val'", "observed 0.0"]),
    ("too few rows", ["expect_table_row_count_to_be_between", "observed 5"]),
    ("empty", ["expect_table_row_count_to_be_between", "observed 0"]),
])
def test_each_violation_fails_with_a_readable_summary(kind, expect):
    outcome = validate_manifest(_break(kind), **RULES)
    assert not outcome.success
    for fragment in expect:
        assert fragment in outcome.summary, (fragment, outcome.summary)
    json.dumps(outcome.result)
