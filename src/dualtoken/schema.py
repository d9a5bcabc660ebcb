"""The configuration's foundations: the strict base model, the error it raises, YAML reading and ``-S``
overrides.

Every section is a pydantic model with ``extra="forbid"`` (an unknown or misspelt key is an error that names
it) defined beside the code that consumes it; ``dualtoken.config`` composes them into the root read from
``params.yaml``. This module imports nothing of the library but its errors, so any layer can use it.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from dualtoken.errors import DualtokenError


class ConfigError(DualtokenError, ValueError):
    """A configuration problem, phrased for the person who wrote the YAML."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def repeated(names: Iterable[str]) -> list[str]:
    """The names given more than once, sorted: what a list that must name its items distinctly reports."""
    return sorted(n for n, count in Counter(names).items() if count > 1)


def _s3_url(value: str) -> str:
    if not value.startswith("s3://"):
        raise ValueError(f"must be an s3:// URL, got {value!r}")
    return value


S3Prefix = Annotated[str, AfterValidator(_s3_url)]




def curated_input() -> Any:
    """The ``input`` key of every stage that reads the curated corpus (``Config.curated``)."""
    return Field(None, description="curated corpus (local or s3:// with shards.json); null: curate.output_dir")


def format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key")
            continue
        got = e.get("input")
        got_text = "" if isinstance(got, dict | list) else f" (got {got!r})"
        lines.append(f"  {loc or '<root>'}: {e['msg']}{got_text}")
    return "\n".join(lines)


def coerce_scalar(text: str) -> Any:
    """Parse an override value the way YAML would (``4`` -> int, ``null`` -> None, ``[a, b]`` -> list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``section.key=value`` overrides applied (list items by index)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, value = item.split("=", 1)
        parts = dotted.strip().split(".")
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {dotted!r}: {where} is not an index of a {len(node)}-item list")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise ConfigError(f"override {dotted!r}: {where} is a value, not a section")
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"override {dotted!r}: {last!r} is not an index of a {len(node)}-item list")
            node[int(last)] = coerce_scalar(value)
        else:
            node[last] = coerce_scalar(value)
    return out


def read_mapping(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw
