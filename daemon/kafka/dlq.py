"""Dead-letter records: what ctd produces to the DLQ topic for input it cannot store."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Final

from daemon.text import one_line

DLQ_TEXT_MAX_BYTES: Final = 64 * 1024
"""``original_text`` is added to a DLQ record only up to this size; base64 is always there."""


def dlq_payload(
    value: bytes | None,
    reason: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    end_offset: int | None = None,
) -> bytes:
    """The JSON record produced to the DLQ topic for one rejected message, or for a
    record batch that could not be decoded (``end_offset`` given).

    ``kind`` is "message" (one record at ``offset``) or "undecodable_batch" (the
    records ``offset`` <= o < ``end_offset``; no original bytes exist).
    ``end_offset`` is exclusive in both. ``original_base64`` (null for a null
    value) restores the exact bytes; ``original_text`` is a convenience for
    humans, present when the value is UTF-8 and at most DLQ_TEXT_MAX_BYTES.
    ``key_encoding`` says how to read ``key``: "utf-8", "base64", or null when
    there was no key. The payload is about 4/3 of the original's size: the DLQ
    producer's max request size must allow for that.
    """
    key_field: str | None = None
    key_encoding: str | None = None
    if key is not None:
        try:
            key_field, key_encoding = key.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            key_field, key_encoding = base64.b64encode(key).decode("ascii"), "base64"
    original_text: str | None = None
    if value is not None and len(value) <= DLQ_TEXT_MAX_BYTES:
        try:
            original_text = value.decode("utf-8")
        except UnicodeDecodeError:
            original_text = None
    record = {
        "kind": "message" if end_offset is None else "undecodable_batch",
        "reason": one_line(reason),
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "end_offset": offset + 1 if end_offset is None else end_offset,
        "key": key_field,
        "key_encoding": key_encoding,
        "original_base64": None if value is None else base64.b64encode(value).decode("ascii"),
        "original_text": original_text,
        "original_size": None if value is None else len(value),
        "ts": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()
