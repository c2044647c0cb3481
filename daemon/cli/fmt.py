"""How the operator tools print numbers, times and markdown tables."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def ts(value: int | None) -> str:
    """Unix seconds as RFC 3339 UTC, or ``-``."""
    return "-" if value is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table; cells escaped so that a reason cannot break the layout."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        out.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return out


def _cell(value: object) -> str:
    text = "-" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
