"""Great Expectations suite for the curated manifest (GX Core, ephemeral context, analytics off).

The suite encodes what downstream stages rely on: every row has a caption of sane length, every image is
exactly the curated resolution, keys and pixel hashes are unique, splits are the known three in roughly
the configured fractions, and the corpus size is plausible. Split fractions are checked as the mean of
0/1 indicator columns, which keeps the check inside stock expectations.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import pandas as pd

REQUIRED_COLUMNS = ["key", "split", "shard", "width", "height", "pixel_sha256", "phash", "caption",
                    "caption_chars", "n_captions", "n_qa", "source", "source_key"]


@dataclass(frozen=True)
class ValidationOutcome:
    success: bool
    summary: str
    result: dict


def _suite(gx, gxe, name: str, *, resolution: int, split_fractions: dict[str, float], split_tolerance: float,
           min_rows: int, max_rows: int, caption_min_chars: int, caption_max_chars: int):
    suite = gx.ExpectationSuite(name=name)
    expectations = [
        gxe.ExpectTableColumnsToMatchSet(column_set=REQUIRED_COLUMNS, exact_match=False),
        gxe.ExpectTableRowCountToBeBetween(min_value=min_rows, max_value=max_rows),
        gxe.ExpectColumnValuesToNotBeNull(column="caption"),
        gxe.ExpectColumnValuesToBeBetween(column="caption_chars", min_value=caption_min_chars,
                                          max_value=caption_max_chars),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=resolution, max_value=resolution),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=resolution, max_value=resolution),
        gxe.ExpectColumnValuesToBeUnique(column="key"),
        gxe.ExpectColumnValuesToBeUnique(column="pixel_sha256"),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(split_fractions)),
    ]
    for split, fraction in split_fractions.items():
        expectations.append(gxe.ExpectColumnMeanToBeBetween(
            column=f"is_{split}", min_value=max(0.0, fraction - split_tolerance),
            max_value=min(1.0, fraction + split_tolerance)))
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def _describe(result) -> str:
    cfg = result.expectation_config
    column = cfg.kwargs.get("column")
    where = f" on column '{column}'" if column else ""
    details = result.result or {}
    parts = [f"FAILED {cfg.type}{where}"]
    if details.get("unexpected_count") is not None:
        parts.append(f"unexpected {details['unexpected_count']}")
    if details.get("partial_unexpected_list"):
        examples = [None if pd.isna(v) else v for v in details["partial_unexpected_list"][:5]]
        parts.append(f"e.g. {examples}")
    if details.get("observed_value") is not None:
        parts.append(f"observed {details['observed_value']}")
    bounds = {k: cfg.kwargs[k] for k in ("min_value", "max_value", "value_set", "column_set") if k in cfg.kwargs}
    if bounds:
        parts.append(f"expected {bounds}")
    if result.exception_info and result.exception_info.get("raised_exception"):
        parts.append(f"error: {result.exception_info.get('exception_message')}")
    return "; ".join(parts)


def validate_manifest(manifest: pd.DataFrame, *, resolution: int, split_fractions: dict[str, float],
                      split_tolerance: float, min_rows: int, max_rows: int,
                      caption_min_chars: int, caption_max_chars: int) -> ValidationOutcome:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe

    frame = manifest.copy()
    for split in split_fractions:
        frame[f"is_{split}"] = (frame["split"] == split).astype(float) if "split" in frame else 0.0
    name = f"curated-manifest-{uuid.uuid4().hex[:8]}"
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # keep stage logs readable
    batch = context.data_sources.add_pandas(name).add_dataframe_asset("manifest").add_batch_definition_whole_dataframe(
        "all")
    suite = context.suites.add(_suite(
        gx, gxe, name, resolution=resolution, split_fractions=split_fractions, split_tolerance=split_tolerance,
        min_rows=min_rows, max_rows=max_rows, caption_min_chars=caption_min_chars,
        caption_max_chars=caption_max_chars))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    result = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
    failures = [_describe(r) for r in result.results if not r.success]
    total = len(result.results)
    summary = "\n".join(failures) if failures else f"all {total} expectations passed"
    if failures:
        summary = f"{len(failures)} of {total} expectations failed:\n{summary}"
    return ValidationOutcome(success=bool(result.success), summary=summary, result=result.to_json_dict())
