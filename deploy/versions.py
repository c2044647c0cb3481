"""Registry version ids: UTC time to the microsecond plus a random suffix, so they sort by time."""

from __future__ import annotations

import re
import secrets
import threading
import time
from typing import Final

from deploy.errors import InvalidVersionIdError

VERSION_PATTERN: Final = re.compile(r"\d{8}T\d{12}Z-[0-9a-f]{4}")
"""UTC ``YYYYMMDDTHHMMSS`` + microseconds + ``Z-`` + 4 hex digits; sorts by time."""


class _MicrosClock:
    """UTC microseconds that strictly increase within the process, even if the clock stalls."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self._last = max(time.time_ns() // 1000, self._last + 1)
            return self._last


_clock = _MicrosClock()


def new_version_id() -> str:
    """A fresh version id, e.g. ``20250101T000000123456Z-a1b2``."""
    secs, micros = divmod(_clock(), 1_000_000)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(secs))
    return f"{stamp}{micros:06d}Z-{secrets.token_hex(2)}"


def validate_version(version: object) -> str:
    """Return ``version`` unchanged if it is a registry version id, else raise."""
    if not isinstance(version, str) or VERSION_PATTERN.fullmatch(version) is None:
        raise InvalidVersionIdError(version, VERSION_PATTERN.pattern)
    return version
