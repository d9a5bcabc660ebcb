"""Great Expectations suite for the curated manifest (GX Core, ephemeral context, analytics off).

The suite encodes what downstream stages rely on: every row has a caption of sane length, every image is
exactly the curated resolution, keys and pixel hashes are unique, splits are the known three in roughly
the configured fractions, and the corpus size is plausible. Split fractions are checked as the mean of
0/1 indicator columns, which keeps the check inside stock expectations.

GX is imported on first use, not at module import: the import takes seconds and callers (the curation job)
overlap it with other work. A fresh ephemeral context per call costs milliseconds and keeps calls isolated.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

import pandas as pd

SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("key", "split", "shard", "width", "height", "pixel_sha256", "phash", "caption",
                    "caption_chars", "n_captions", "n_qa", "source", "source_key")
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class ValidationOutcome:
    success: bool
    summary: str  # one line per failed expectation, or "all N expectations passed"
    result: dict  # the GX suite result, JSON-serialisable, without what changes run to run (see ``_reproducible``)


def _expectations(gxe: Any, *, resolution: int, split_fractions: dict[str, float], split_tolerance: float,
                  min_rows: int, max_rows: int, caption_min_chars: int, caption_max_chars: int) -> list:
    checks = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(REQUIRED_COLUMNS), exact_match=False),
        gxe.ExpectTableRowCountToBeBetween(min_value=min_rows, max_value=max_rows),
        gxe.ExpectColumnValuesToNotBeNull(column="caption"),
        gxe.ExpectColumnValuesToBeBetween(column="caption_chars", min_value=caption_min_chars,
                                          max_value=caption_max_chars),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=resolution, max_value=resolution),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=resolution, max_value=resolution),
        gxe.ExpectColumnValuesToBeUnique(column="key"),
        gxe.ExpectColumnValuesToBeUnique(column="pixel_sha256"),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
    ]
    # A zero fraction stays checked: its share must then lie in [0, tolerance].
    checks += [gxe.ExpectColumnMeanToBeBetween(column=f"is_{split}", min_value=max(0.0, frac - split_tolerance),
                                               max_value=min(1.0, frac + split_tolerance))
               for split, frac in split_fractions.items()]
    return checks


def _errors(exception_info: dict) -> list[str]:
    """Exception messages from either shape GX uses: flat, or keyed by the metric that raised."""
    infos = [exception_info] if "raised_exception" in exception_info else list(exception_info.values())
    messages = (str(i.get("exception_message")) for i in infos if isinstance(i, dict) and i.get("raised_exception"))
    return list(dict.fromkeys(messages))


def _describe(result: Any) -> str:
    """One line for one failed expectation: what, where, how many, examples, observed vs expected."""
    cfg = result.expectation_config
    details = result.result or {}
    parts = [cfg.type]
    if column := cfg.kwargs.get("column"):
        parts.append(f"column={column}")
    if details.get("unexpected_count") is not None:
        parts.append(f"unexpected={details['unexpected_count']}")
    if values := details.get("partial_unexpected_list"):
        # NaN != NaN, so normalise missing values before de-duplicating the examples.
        distinct = list(dict.fromkeys(None if pd.isna(v) else v for v in values))
        parts.append(f"examples={distinct[:MAX_EXAMPLES]}")
    if missing := details.get("details", {}).get("mismatched", {}).get("missing"):
        parts.append(f"missing={missing}")
    elif "observed_value" in details:  # None here means undefined, e.g. the mean of an empty column
        observed = details["observed_value"]
        parts.append(f"observed={round(observed, 4) if isinstance(observed, float) else observed}")
    bounds = {k: round(v, 4) if isinstance(v, float) else v
              for k, v in cfg.kwargs.items() if k in ("min_value", "max_value")}
    if bounds:
        parts.append(f"expected={bounds}")
    if "value_set" in cfg.kwargs:
        parts.append(f"expected in {cfg.kwargs['value_set']}")
    parts += [f"error: {message}" for message in _errors(result.exception_info or {})]
    return " ".join(parts)


def validate_manifest(manifest: pd.DataFrame, *, resolution: int, split_fractions: dict[str, float],
                      split_tolerance: float, min_rows: int, max_rows: int,
                      caption_min_chars: int, caption_max_chars: int) -> ValidationOutcome:
    """Validate the manifest; never raises on bad data (an empty or column-less frame is a failed outcome)."""
    if unknown := set(split_fractions) - set(SPLITS):
        raise ValueError(f"unknown splits in split_fractions: {sorted(unknown)}")
    os.environ["GX_ANALYTICS_ENABLED"] = "false"  # before GX is imported or a context exists
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    frame = manifest.copy()
    if "split" in frame:  # without it the mean checks fail as missing columns rather than report a bogus 0.0
        for split in split_fractions:
            frame[f"is_{split}"] = (frame["split"] == split).astype(float)

    name = f"{SUITE_NAME}-{uuid.uuid4().hex[:12]}"  # unique within the process
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # keep stage logs readable
    batch = context.data_sources.add_pandas(name).add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=_expectations(
        gxe, resolution=resolution, split_fractions=split_fractions, split_tolerance=split_tolerance,
        min_rows=min_rows, max_rows=max_rows, caption_min_chars=caption_min_chars,
        caption_max_chars=caption_max_chars)))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    result = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")

    failed = [_describe(r) for r in result.results if not r.success]
    summary = "\n".join(failed) or f"all {len(result.results)} expectations passed"
    return ValidationOutcome(success=bool(result.success), summary=summary,
                             result=_reproducible(result.to_json_dict()))


SUITE_NAME = "curated-manifest"
_RUN_SPECIFIC_KWARGS = ("batch_id",)  # names the ephemeral batch: a fresh random id per call


def _reproducible(result: dict[str, Any]) -> dict[str, Any]:
    """The suite result less GX's random ids, per-call names and clocks. The record is part of the curate
    stage's output, which DVC hashes: with them every rerun changed the corpus's hash and reran every stage
    downstream, although every shard was byte-identical. What stays: the verdicts, the observed values, the
    expectations with their arguments, GX's version and its fingerprint of the validated frame."""
    meta = result.get("meta", {})
    results = []
    for entry in result["results"]:
        config = {k: v for k, v in entry["expectation_config"].items() if k != "id"}
        config["kwargs"] = {k: v for k, v in config.get("kwargs", {}).items() if k not in _RUN_SPECIFIC_KWARGS}
        results.append({**entry, "expectation_config": config})
    return {"success": result["success"], "suite_name": SUITE_NAME, "statistics": result["statistics"],
            "great_expectations_version": meta.get("great_expectations_version"),
            "data_fingerprint": meta.get("batch_markers", {}).get("pandas_data_fingerprint"),
            "results": results}
