"""Text that reaches logs, the DLQ and operators: one line, printable, bounded."""

from __future__ import annotations

from typing import Final

MAX_REASON_CHARS: Final = 500


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """Escape non-printable characters (newlines, controls, surrogates) and cap the length."""
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(line) > limit:
        line = line[: limit - 3] + "..."
    return line


def show(value: object, limit: int = 60) -> str:
    """``repr`` of a value, cut to ``limit`` characters so a 1 MiB field cannot flood a reason."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...({len(text)} chars)"
