"""Bar events: Kafka bytes become typed records or a readable reason, once, at the edge.

Two JSON forms arrive on the bars topic (DESIGN.md)::

    {"symbol": "BTCUSDT", "ts": "2025-01-01T00:00:00Z", "open": 1, "high": 2, "low": 1,
     "close": 2, "volume": 10}
    {"symbol": "BTCUSDT", "bars": [{"ts": ..., "open": ..., ...}, ...]}

Everything past this module handles ``BarRecord`` only. A message is valid as a
whole or not at all: one bad bar sends the whole batch to the DLQ, with a reason
that names the field, the bar index and the bad value. Prices must lie in
``trainers.features.MIN_PRICE..MAX_PRICE`` (and volume below ``MAX_VOLUME``):
a finite price the features cannot represent would make every later training
run of the symbol see infinite features. Rules that depend on the clock or on
the symbol's history come after decoding (``daemon.kafka.plausibility``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, Final, NoReturn

import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from daemon.errors import InvalidMessage
from daemon.text import show
from trainers.data import BarRecord, InvalidSymbolError, validate_symbol
from trainers.features import MAX_PRICE, MAX_VOLUME, MIN_PRICE

MAX_MESSAGE_BYTES: Final = 1 << 20
"""Messages larger than this are rejected before parsing (JSON parsing cost is unbounded)."""

MAX_BATCH_BARS: Final = 10_000

# Older than any electronic exchange record; far below it is a unit bug, not history.
MIN_TS: Final = int(datetime(1900, 1, 1, tzinfo=UTC).timestamp())
# The last second RFC 3339 can write; epoch milliseconds sent as seconds land above it.
MAX_TS: Final = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())
_MAX_TS_TEXT: Final = 64


def _parse_ts(value: object) -> int:
    """Epoch seconds (int) or an RFC 3339 / ISO-8601 string with a zone, to int seconds UTC."""
    # Exact types: JSON gives no subclasses, and bool (an int subclass) is not a time.
    if type(value) is int:
        ts = value
    elif type(value) is str:
        if len(value) > _MAX_TS_TEXT or not value.isascii():
            raise ValueError(f"is not an RFC 3339 timestamp: {show(value)}")
        try:  # RFC 3339 allows a lower-case "t" and "z"; fromisoformat does not
            moment = datetime.fromisoformat(value.upper())
        except ValueError:
            raise ValueError(f"is not an RFC 3339 timestamp: {show(value)}") from None
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"has no timezone (naive timestamps are ambiguous): {show(value)}")
        if moment.microsecond:
            # Truncating would silently merge two bars into one (symbol, ts) row.
            raise ValueError(f"has sub-second precision: {show(value)}")
        ts = int(moment.timestamp())
    else:
        raise ValueError(
            "must be integer epoch seconds or an RFC 3339 string with timezone, "
            f"got {type(value).__name__} {show(value)}"
        )
    if not MIN_TS <= ts <= MAX_TS:
        raise ValueError(
            f"{ts} is outside {MIN_TS}..{MAX_TS} (epoch seconds 1900..9999; milliseconds?)"
        )
    return ts


class _Ohlcv(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    ts: int
    open: float = Field(gt=0, allow_inf_nan=False)
    high: float = Field(gt=0, allow_inf_nan=False)
    low: float = Field(gt=0, allow_inf_nan=False)
    close: float = Field(gt=0, allow_inf_nan=False)
    volume: float = Field(ge=0, allow_inf_nan=False)

    @field_validator("ts", mode="before")
    @classmethod
    def _ts(cls, value: object) -> int:
        return _parse_ts(value)

    @model_validator(mode="after")
    def _consistent(self) -> _Ohlcv:
        for name in ("open", "high", "low", "close"):
            price = getattr(self, name)
            if not MIN_PRICE <= price <= MAX_PRICE:
                raise ValueError(
                    f"{name} {price!r} is outside {MIN_PRICE:g}..{MAX_PRICE:g}, the prices the "
                    "features can represent"
                )
        if self.volume > MAX_VOLUME:
            raise ValueError(
                f"volume {self.volume!r} is above {MAX_VOLUME:g}, the largest the features "
                "can represent"
            )
        if self.high < max(self.open, self.close):
            raise ValueError(
                f"high {self.high!r} is below max(open, close) {max(self.open, self.close)!r}"
            )
        if self.low > min(self.open, self.close):
            raise ValueError(
                f"low {self.low!r} is above min(open, close) {min(self.open, self.close)!r}"
            )
        return self


class _Symbol(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    symbol: str

    @field_validator("symbol", mode="before")
    @classmethod
    def _symbol(cls, value: object) -> str:
        try:
            return validate_symbol(value)
        except InvalidSymbolError:
            raise ValueError(f"invalid symbol {show(value)}") from None


class _SingleBar(_Ohlcv, _Symbol):
    """The single form: one bar with its symbol."""


class _Batch(_Symbol):
    """The batch form: one symbol, its bars without a symbol field, distinct ts."""

    bars: list[_Ohlcv] = Field(min_length=1, max_length=MAX_BATCH_BARS)

    @model_validator(mode="after")
    def _distinct_ts(self) -> _Batch:
        seen: dict[int, int] = {}
        for i, bar in enumerate(self.bars):
            first = seen.setdefault(bar.ts, i)
            if first != i:
                raise ValueError(f"bars[{i}]: duplicate ts {bar.ts} (same as bars[{first}])")
        return self


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _reason_from(exc: ValidationError) -> str:
    """The first error as 'bars[3].open: <why> (got <value>)', plus how many more there were."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = _location(first["loc"])
    if first["type"] == "extra_forbidden":
        text = f"unknown field {where!r}"
    elif first["type"] == "value_error":
        # Our validators' messages already name the value.
        text = f"{where}: {first['ctx']['error']}" if where else str(first["ctx"]["error"])
    elif first["type"] == "missing":
        text = f"missing field {where!r}"
    else:
        text = f"{where}: {first['msg']} (got {show(first['input'])})"
    if len(errors) > 1:
        more = len(errors) - 1
        text += f" (and {more} more problem{'s' if more > 1 else ''})"
    return text


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Duplicate keys are ambiguous (which 'close' did the producer mean?): reject them."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {show(key)}")
        obj[key] = value
    return obj


def _parse_json(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise InvalidMessage("message value is null (tombstone)")
    if len(value) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"message is {len(value)} bytes, more than {MAX_MESSAGE_BYTES}")
    if not value:
        raise InvalidMessage("message value is empty")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"message is not UTF-8: byte {exc.start} is invalid") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise InvalidMessage("message is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, our hooks, int digit limit
        raise InvalidMessage(f"message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidMessage(f"message must be a JSON object, got {type(obj).__name__}")
    return obj


def _check_key(key: bytes | None, symbol: str) -> None:
    if key is None:
        return
    try:
        key_text = key.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidMessage(f"key {show(key)} is not UTF-8 (symbol {symbol!r})") from None
    if key_text != symbol:
        raise InvalidMessage(f"key {show(key_text)} does not match symbol {symbol!r}")


def decode_bar_message(value: bytes | None, key: bytes | None = None) -> list[BarRecord]:
    """Validate one bars-topic message; return its bars in message order.

    Raises InvalidMessage (only) for anything that is not a valid single bar or
    batch. A present ``key`` (even empty) must equal the symbol: the key decides
    the partition, so a mismatch means per-symbol ordering is not guaranteed.
    """
    records = _decode_fast(value)
    if records is None:
        records = _decode_checked(value)
    _check_key(key, records[0].symbol)
    return records


def _decode_checked(value: bytes | None) -> list[BarRecord]:
    """The full validation: slow, but every rejection gets its precise reason."""
    obj = _parse_json(value)
    try:
        if "bars" in obj:
            batch = _Batch.model_validate(obj)
            symbol, bars = batch.symbol, batch.bars
        else:
            single = _SingleBar.model_validate(obj)
            symbol, bars = single.symbol, [single]
    except ValidationError as exc:
        raise InvalidMessage(_reason_from(exc)) from None
    return [BarRecord(symbol, b.ts, b.open, b.high, b.low, b.close, b.volume) for b in bars]


# gc=False: these never hold a cycle, and untracked objects do not count towards the
# collector's next pass (its passes were ~40% of batch decoding: 1.35 s against 0.76 s with
# the collector off, for 200k bars). The price and volume bounds are the checked way's,
# tested in C (they also reject inf, which JSON can spell as 1e999).
_Price = Annotated[float, msgspec.Meta(ge=MIN_PRICE, le=MAX_PRICE)]


class _FastBar(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    # msgspec parses RFC 3339 in C (a quarter of the cost of fromisoformat in a loop).
    ts: int | Annotated[datetime, msgspec.Meta(tz=True)]
    open: _Price
    high: _Price
    low: _Price
    close: _Price
    volume: Annotated[float, msgspec.Meta(ge=0, le=MAX_VOLUME)]


class _FastSingle(_FastBar, forbid_unknown_fields=True, gc=False):
    symbol: str


class _FastBatch(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    symbol: str
    bars: Annotated[list[_FastBar], msgspec.Meta(min_length=1, max_length=MAX_BATCH_BARS)]


_BAR_FIELDS: Final = len(_FastBar.__struct_fields__)
_record: Final = partial(tuple.__new__, BarRecord)
"""A BarRecord from a tuple in field order, without the Python-level ``__new__`` frame."""
_decode_single = msgspec.json.Decoder(_FastSingle).decode
_decode_batch = msgspec.json.Decoder(_FastBatch).decode


def _rows(symbol: str, bars: Sequence[_FastBar]) -> tuple[list[BarRecord], int] | None:
    """The bars as records and how many ts were strings; None if a check fails. (A pass a
    column at a time with map/all measured no faster: building the tuples, and the
    collections their allocation triggers, cost more than the checks.)"""
    out: list[BarRecord] = []
    strings = 0
    for b in bars:
        o, h, lo, c, ts = b.open, b.high, b.low, b.close, b.ts
        whole = True
        if isinstance(ts, datetime):
            strings += 1
            whole, ts = not ts.microsecond, int(ts.timestamp())
        # Ranges and finiteness were checked by msgspec; what is left relates fields.
        if not (whole and MIN_TS <= ts <= MAX_TS and lo <= o <= h and lo <= c <= h):
            return None
        out.append(_record((symbol, ts, o, h, lo, c, b.volume)))
    # A set comprehension per single-bar message was a quarter of its decoding time.
    if len(out) > 1 and len({r.ts for r in out}) != len(out):
        return None
    return out, strings


def _decode_fast(value: bytes | None) -> list[BarRecord] | None:
    """The common case of ``_decode_checked`` at a fraction of its cost; None if in doubt.

    Accepts a subset of what ``_decode_checked`` accepts and returns the same
    records for it (tests/test_events.py checks both on generated messages);
    anything else returns None and goes the checked way for its reason.
    msgspec parses and type-checks in C but lets a duplicate key overwrite the
    first silently, so duplicates are caught by counting quotes: in a message
    that passed every other check no string can contain a quote, so the raw
    text has exactly two per key, symbol and string timestamp.
    """
    if value is None or not 0 < len(value) <= MAX_MESSAGE_BYTES:
        return None
    try:
        if b'"bars"' in value:
            batch = _decode_batch(value)
            symbol, bars, keys = batch.symbol, batch.bars, 2
        else:
            single = _decode_single(value)
            symbol, bars, keys = single.symbol, [single], 1
        validate_symbol(symbol)
        checked = _rows(symbol, bars)
        if checked is None:
            return None
        records, strings = checked
        if value.count(b'"') != 2 * (1 + keys + _BAR_FIELDS * len(bars) + strings):
            return None
        return records
    except (msgspec.MsgspecError, ValueError):
        return None


def format_ts(ts: int) -> str:
    """RFC 3339 UTC with a 'Z' suffix, e.g. '2025-01-01T00:00:00Z'."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def _ohlcv(record: BarRecord) -> dict[str, Any]:
    return {
        "ts": format_ts(record.ts),
        "open": record.open,
        "high": record.high,
        "low": record.low,
        "close": record.close,
        "volume": record.volume,
    }


def _dumps(obj: object) -> bytes:
    # allow_nan=False: never produce what decode_bar_message would reject.
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


def encode_bar(record: BarRecord) -> bytes:
    """Canonical single-form JSON (fixed key order, compact, ts as RFC 3339 'Z')."""
    return _dumps({"symbol": record.symbol, **_ohlcv(record)})


def encode_batch(symbol: str, records: Sequence[BarRecord]) -> bytes:
    """Batch-form JSON; raises ValueError if a record belongs to another symbol."""
    for i, record in enumerate(records):
        if record.symbol != symbol:
            raise ValueError(f"records[{i}] has symbol {record.symbol!r}, batch is {symbol!r}")
    return _dumps({"symbol": symbol, "bars": [_ohlcv(r) for r in records]})
