"""structlog set-up: JSON lines for machines, a readable console for people.

Every event carries the context bound where it applies (symbol, version,
run_id). Exceptions are rendered without local variables so that secrets held
in locals never reach the log.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog
from structlog.tracebacks import ExceptionDictTransformer


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was configured:
    a command run in-process (tests, embedding) may replace and close the stream it saw."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(
    level: str = "INFO",
    fmt: Literal["auto", "json", "console"] = "auto",
) -> None:
    """Configure structlog (and stdlib logging, for library messages) once per process."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False)
        )
    else:
        shared.append(
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        )
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    # kafka-python logs through stdlib logging; keep its chatter at WARNING.
    logging.basicConfig(
        level=logging.WARNING, stream=_Stderr(), format="%(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.ERROR)


def get_logger(**context: object) -> structlog.stdlib.BoundLogger:
    """A logger with ``context`` (symbol, version, run_id, ...) bound to every event."""
    # Lazy proxy: resolved at first use, so loggers bound at import time still
    # follow configure_logging() called later.
    logger: structlog.stdlib.BoundLogger = structlog.get_logger("ctd", **context)
    return logger
