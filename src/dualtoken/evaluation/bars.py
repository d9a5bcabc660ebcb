"""The champion bars: the evaluate stage's measurements against the configured bounds (``evaluate.champion_bars``).

The verdict is part of the metrics (a stakeholder reads why a version became champion, or did not); the
stage then moves the registry alias when every bar holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dualtoken.evaluation.config import BarConfig
from dualtoken.schema import ConfigError


def metric_at(metrics: Mapping[str, Any], path: str, key: str) -> float:
    """The number at a dotted path of the metrics; a path to nothing or to no number names ``key``."""
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            near = sorted(node) if isinstance(node, Mapping) else []
            raise ConfigError(f"{key}: the metrics have no {path!r} (at {part!r}; there: {near[:12]})")
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, int | float):
        raise ConfigError(f"{key}: {path!r} is no number ({type(node).__name__})")
    return float(node)


def _bound(metrics: Mapping[str, Any], bound: float | str | None, key: str) -> float | None:
    return metric_at(metrics, bound, key) if isinstance(bound, str) else bound


def check_bars(metrics: Mapping[str, Any], bars: Sequence[BarConfig],
               key: str = "evaluate.champion_bars") -> dict[str, Any]:
    """``{"passed": all hold, "bars": [{metric, value, min, max, passed}]}`` with bounds resolved to numbers."""
    rows = []
    for i, bar in enumerate(bars):
        value = metric_at(metrics, bar.metric, f"{key}.{i}.metric")
        low, high = (_bound(metrics, bound, f"{key}.{i}.{name}") for name, bound in (("min", bar.min),
                                                                                        ("max", bar.max)))
        held = (low is None or value >= low) and (high is None or value <= high)
        rows.append({"metric": bar.metric, "value": value, "min": low, "max": high, "passed": held})
    return {"passed": all(r["passed"] for r in rows), "bars": rows}
