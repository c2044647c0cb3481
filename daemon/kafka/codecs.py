"""Kafka compression codecs: every one a producer may use must decode here, checked at start-up.

kafka-python decodes gzip with the standard library and snappy, lz4 and zstd
only with optional packages; without one, every batch in that codec fails to
decode. ctd depends on all three (pyproject.toml), and ``check_codecs`` proves
at start-up that each round-trips, in both snappy framings (raw, as librdkafka
writes it, and xerial, as the Java client does), so a broken install fails
naming the package instead of dead-lettering a feed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from kafka import codec

from daemon.errors import CodecUnavailableError

CODEC_PACKAGES: Final = {
    "gzip": "the Python standard library (zlib)",
    "snappy": "python-snappy",
    "lz4": "lz4",
    "zstd": "zstandard",
}
"""Kafka codec name -> the package kafka-python needs for it."""

_SAMPLE: Final = b'{"symbol": "BTCUSDT", "ts": 1735689600, "close": 94000.5}' * 40


def _round_trips(encode: Callable[[bytes], bytes] | None, decode: Callable[[bytes], bytes]) -> str:
    """'' if ``decode(encode(sample))`` gives the sample back, else what went wrong."""
    if encode is None:
        return "not installed"
    try:
        back = decode(encode(_SAMPLE))
    except Exception as exc:  # NotImplementedError when missing; anything else is broken
        return f"{type(exc).__name__}: {exc}"
    return "" if bytes(back) == _SAMPLE else "decoded bytes differ from the original"


def _xerial_snappy(payload: bytes) -> bytes:
    return bytes(codec.snappy_encode(payload, xerial_compatible=True))


def _raw_snappy(payload: bytes) -> bytes:
    return bytes(codec.snappy_encode(payload, xerial_compatible=False))


def check_codecs() -> None:
    """Raise CodecUnavailableError unless gzip, snappy, lz4 and zstd all round-trip."""
    checks: dict[str, list[tuple[Callable[[bytes], bytes] | None, Callable[[bytes], bytes]]]] = {
        "gzip": [(codec.gzip_encode, codec.gzip_decode)],
        "snappy": [(_raw_snappy, codec.snappy_decode), (_xerial_snappy, codec.snappy_decode)],
        "lz4": [(codec.lz4_encode, codec.lz4_decode)],
        "zstd": [(codec.zstd_encode, codec.zstd_decode)],
    }
    missing: dict[str, str] = {}
    for name, pairs in checks.items():
        for encode, decode in pairs:
            problem = _round_trips(encode, decode)
            if problem:
                missing[name] = problem
                break
    if missing:
        raise CodecUnavailableError(missing, CODEC_PACKAGES)
