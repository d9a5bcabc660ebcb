import json
import os
import socket

import numpy as np
import pandas as pd
import pytest

from dualtoken.curation.validate import validate_manifest

RULES = {"resolution": 64, "split_fractions": {"train": 0.8, "val": 0.1, "test": 0.1}, "split_tolerance": 0.05,
         "min_rows": 20, "max_rows": 10_000, "caption_min_chars": 3, "caption_max_chars": 50}
N_EXPECTATIONS = 12  # 9 fixed + one split-fraction check per split


def _frame(n: int = 200) -> pd.DataFrame:
    """A valid manifest: splits cycle 8 train / 1 val / 1 test, so any multiple of 10 rows is exact."""
    splits = np.array(["train"] * 8 + ["val", "test"])[np.arange(n) % 10]
    captions = [f"caption {i}" for i in range(n)]
    return pd.DataFrame({
        "key": [f"k{i}" for i in range(n)], "split": splits, "shard": "train-000000.tar",
        "width": 64, "height": 64, "pixel_sha256": [f"{i:064x}" for i in range(n)], "phash": "0" * 16,
        "caption": captions, "caption_chars": [len(c) for c in captions],
        "n_captions": 1, "n_qa": 0, "source": "demo", "source_key": [str(i) for i in range(n)],
    })


def _failed(result: dict) -> set[tuple[str, str | None]]:
    return {(r["expectation_config"]["type"], r["expectation_config"]["kwargs"].get("column"))
            for r in result["results"] if not r["success"]}


def test_good_manifest_passes():
    outcome = validate_manifest(_frame(), **RULES)
    assert outcome.success, outcome.summary
    assert outcome.summary == f"all {N_EXPECTATIONS} expectations passed"
    assert _failed(outcome.result) == set()
    json.dumps(outcome.result, allow_nan=False)


def _set(df: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    df.loc[row, column] = value
    return df


MEAN, BETWEEN, UNIQUE = "expect_column_mean_to_be_between", "expect_column_values_to_be_between", \
    "expect_column_values_to_be_unique"
ROWS = "expect_table_row_count_to_be_between"

CASES = {
    "duplicate key": (lambda: _set(_frame(), 5, "key", "k4"), {(UNIQUE, "key")}, ["unexpected=2", "'k4'"]),
    "duplicate pixels": (lambda: _set(_frame(), 7, "pixel_sha256", f"{3:064x}"), {(UNIQUE, "pixel_sha256")},
                         [f"'{3:064x}'"]),
    "wrong width": (lambda: _set(_frame(), 2, "width", 32), {(BETWEEN, "width")}, ["unexpected=1", "[32]"]),
    "wrong height": (lambda: _set(_frame(), 2, "height", 65), {(BETWEEN, "height")}, ["[65]"]),
    "null caption": (lambda: _set(_frame(), 1, "caption", None), {("expect_column_values_to_not_be_null", "caption")},
                     ["unexpected=1", "[None]"]),
    "caption too long": (lambda: _set(_frame(), 0, "caption_chars", 999), {(BETWEEN, "caption_chars")}, ["[999]"]),
    "unknown split": (lambda: _set(_frame(), 0, "split", "dev"), {("expect_column_values_to_be_in_set", "split")},
                      ["['dev']"]),
    "split fraction": (lambda: _frame().replace({"split": {"val": "train"}}), {(MEAN, "is_train"), (MEAN, "is_val")},
                       ["observed=0.9", "observed=0.0", "'max_value': 0.85"]),
    "too few rows": (lambda: _frame(10), {(ROWS, None)}, ["observed=10", "'min_value': 20"]),
    "empty": (lambda: _frame().head(0), {(ROWS, None), (MEAN, "is_train"), (MEAN, "is_val"), (MEAN, "is_test")},
              ["observed=0", "observed=None"]),
    "missing column": (lambda: _frame().drop(columns="phash"), {("expect_table_columns_to_match_set", None)},
                       ["missing=['phash']"]),
}


@pytest.mark.parametrize("kind", CASES)
def test_each_violation_fails_alone_with_a_readable_summary(kind):
    make, failing, fragments = CASES[kind]
    outcome = validate_manifest(make(), **RULES)
    assert not outcome.success
    assert _failed(outcome.result) == failing, outcome.summary
    lines = outcome.summary.splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(t for t, _ in failing)
    for expectation, column in failing:
        assert any(line.startswith(expectation) and (column is None or f"column={column} " in line) for line in lines)
    for fragment in fragments:
        assert fragment in outcome.summary, (fragment, outcome.summary)
    json.dumps(outcome.result, allow_nan=False)


def test_examples_are_distinct_and_capped_at_five():
    df = _frame()
    df.loc[:11, "width"] = [1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    summary = validate_manifest(df, **RULES).summary
    assert "unexpected=12 examples=[1, 2, 3, 4, 5] " in summary


def test_missing_split_column_reports_errors_not_bogus_fractions():
    outcome = validate_manifest(_frame().drop(columns="split"), **RULES)
    assert not outcome.success
    assert "missing=['split']" in outcome.summary
    assert "observed=0.0" not in outcome.summary
    assert 'The column "split" in BatchData does not exist' in outcome.summary


def test_zero_fraction_split_is_still_checked():
    rules = {**RULES, "split_fractions": {"train": 0.9, "val": 0.1, "test": 0.0}}
    assert not validate_manifest(_frame(), **rules).success  # 10% test rows > tolerance 5%
    good = _frame().replace({"split": {"test": "train"}})
    assert validate_manifest(good, **rules).success


def test_input_is_not_modified_and_repeated_calls_do_not_clash():
    df = _frame()
    before = df.copy()
    assert all(validate_manifest(df, **RULES).success for _ in range(2))
    pd.testing.assert_frame_equal(df, before)


def test_unknown_split_in_fractions_is_a_caller_error():
    with pytest.raises(ValueError, match="dev"):
        validate_manifest(_frame(), **{**RULES, "split_fractions": {"train": 0.9, "dev": 0.1}})


def test_no_network_connection_is_attempted(monkeypatch):
    attempts = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError("network disabled in test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("GX_ANALYTICS_ENABLED", "true")  # the module must switch it off itself
    assert validate_manifest(_frame(), **RULES).success
    assert attempts == []
    assert os.environ["GX_ANALYTICS_ENABLED"] == "false"
