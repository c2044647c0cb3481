# Over 400 lines: 43 tests, one per rule of the bar-message contract, side by side.
"""Bar-event decoding: valid messages become BarRecords, everything else an InvalidMessage."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.errors import InvalidMessage
from daemon.kafka.bars import (
    MAX_BATCH_BARS,
    MAX_MESSAGE_BYTES,
    _decode_checked,
    _decode_fast,
    decode_bar_message,
    encode_bar,
    encode_batch,
)
from daemon.kafka.dlq import dlq_payload
from daemon.text import MAX_REASON_CHARS
from trainers.data import SYMBOL_PATTERN, BarRecord
from trainers.features import MAX_PRICE, MAX_VOLUME, MIN_PRICE

TS_2025 = 1735689600  # 2025-01-01T00:00:00Z


def bar(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "symbol": "BTCUSDT",
        "ts": "2025-01-01T00:00:00Z",
        "open": 100.0,
        "high": 110.0,
        "low": 90.0,
        "close": 105.0,
        "volume": 12.5,
    }
    fields.update(overrides)
    return fields


def batch_bar(i: int, **overrides: Any) -> dict[str, Any]:
    fields = bar(ts=TS_2025 + 60 * i, **overrides)
    del fields["symbol"]
    return fields


def dumps(obj: object) -> bytes:
    return json.dumps(obj).encode()


def reason_of(value: bytes | None, key: bytes | None = None) -> str:
    with pytest.raises(InvalidMessage) as info:
        decode_bar_message(value, key)
    reason = info.value.reason
    assert "\n" not in reason
    assert len(reason) <= MAX_REASON_CHARS
    assert str(info.value) == reason
    return reason


def test_single_bar_decodes_to_record_with_epoch_seconds() -> None:
    """A valid single-form message yields one record with ts as int Unix seconds UTC."""
    assert decode_bar_message(dumps(bar())) == [
        BarRecord("BTCUSDT", TS_2025, 100.0, 110.0, 90.0, 105.0, 12.5)
    ]


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (TS_2025, TS_2025),
        ("2025-01-01T02:00:00+02:00", TS_2025),
        ("2024-12-31T19:00:00-05:00", TS_2025),
        ("2025-01-01T00:00:00.000Z", TS_2025),
        ("2025-01-01 00:00:00+00:00", TS_2025),
    ],
)
def test_timestamp_forms_normalise_to_utc_seconds(ts: object, expected: int) -> None:
    """Epoch integers and zoned RFC 3339 strings all normalise to the same UTC second."""
    assert decode_bar_message(dumps(bar(ts=ts)))[0].ts == expected


def test_integer_prices_are_accepted_as_floats() -> None:
    """JSON integers are valid prices and become floats."""
    record = decode_bar_message(dumps(bar(open=100, high=110, low=90, close=105, volume=0)))[0]
    assert (record.open, record.volume) == (100.0, 0.0)
    assert isinstance(record.open, float)


def test_batch_decodes_in_message_order_with_top_level_symbol() -> None:
    """A batch yields its bars in order, each carrying the batch's symbol."""
    message = {"symbol": "ETHUSDT", "bars": [batch_bar(i, close=100.0 + i) for i in range(3)]}
    records = decode_bar_message(dumps(message), key=b"ETHUSDT")
    assert [r.ts for r in records] == [TS_2025, TS_2025 + 60, TS_2025 + 120]
    assert [r.close for r in records] == [100.0, 101.0, 102.0]
    assert {r.symbol for r in records} == {"ETHUSDT"}


@pytest.mark.parametrize(
    "symbol",
    [
        "../x",
        "a/b",
        "A/B",
        "btcusdt",
        "BTC\x00",
        "BTC\n",
        "",
        "..",
        ".A",
        "A" * 33,
        "BTC€",
        5,
        None,
    ],
)
def test_bad_symbols_are_invalid(symbol: object) -> None:
    """Path-like, lower-case, control-character, empty, over-long and non-string symbols fail."""
    assert "invalid symbol" in reason_of(dumps(bar(symbol=symbol)))


def test_bad_symbol_in_batch_is_invalid() -> None:
    """The batch's top-level symbol is validated like a single bar's."""
    assert "invalid symbol" in reason_of(dumps({"symbol": "a/b", "bars": [batch_bar(0)]}))


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2025-01-01T00:00:00", "timezone"),
        ("2025-01-01", "timezone"),
        ("2025-01-01T00:00:00.5Z", "sub-second"),
        ("yesterday", "RFC 3339"),
        ("2025-13-01T00:00:00Z", "RFC 3339"),
        ("\uff12\uff10\uff12\uff15-01-01T00:00:00Z", "RFC 3339"),  # full-width digits
        (TS_2025 * 1000, "milliseconds"),
        (-(10**12), "outside"),
        (True, "bool"),
        (float(TS_2025), "float"),
        (str(TS_2025), "RFC 3339"),
        (None, "NoneType"),
    ],
)
def test_bad_timestamps_are_invalid(ts: object, expected: str) -> None:
    """Naive, fractional, unparsable, out-of-range and wrongly typed ts values fail, named."""
    reason = reason_of(dumps(bar(ts=ts)))
    assert reason.startswith("ts: ")
    assert expected in reason


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("open", 0, "greater than 0"),
        ("close", -1.5, "greater than 0"),
        ("low", "90.0", "valid number"),
        ("open", True, "valid number"),
        ("volume", -0.1, "greater than or equal to 0"),
        ("volume", None, "valid number"),
        ("close", [1], "valid number"),
    ],
)
def test_bad_prices_and_volume_are_invalid(field: str, value: object, expected: str) -> None:
    """Non-positive, infinite, string, bool and null numbers fail with the field named."""
    reason = reason_of(dumps(bar(**{field: value})))
    assert reason.startswith(f"{field}: ")
    assert expected in reason


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_constants_are_invalid(literal: str) -> None:
    """NaN/Infinity literals (which Python's json would accept) are rejected."""
    text = json.dumps(bar()).replace('"open": 100.0', f'"open": {literal}')
    assert literal in text
    assert literal in reason_of(text.encode())


def test_overflowing_number_is_invalid() -> None:
    """A number literal too large for a float (1e400 parses as inf) is not finite."""
    text = json.dumps(bar()).replace('"high": 110.0', '"high": 1e400')
    assert reason_of(text.encode()) == "high: Input should be a finite number (got inf)"


@pytest.mark.parametrize(
    ("prices", "expected"),
    [
        ({"open": 1e300, "high": 1e300, "close": 1e300}, "open 1e+300 is outside 1e-18..1e+18"),
        ({"high": 1e19}, "high 1e+19 is outside"),
        ({"low": 1e-300}, "low 1e-300 is outside"),
        ({"open": 1e-19, "low": 1e-19}, "open 1e-19 is outside"),
        ({"volume": 1e200}, "volume 1e+200 is above 1e+150"),
    ],
)
def test_finite_values_the_features_cannot_represent_are_invalid(
    prices: dict[str, float], expected: str
) -> None:
    """A finite positive price outside MIN_PRICE..MAX_PRICE (1e300 overflowed float32
    features) or a volume above MAX_VOLUME is rejected by both decoding paths."""
    value = dumps(bar(**prices))
    assert _decode_fast(value) is None
    assert reason_of(value).startswith(expected)
    batch = dumps({"symbol": "BTCUSDT", "bars": [batch_bar(0), batch_bar(1, **prices)]})
    assert reason_of(batch).startswith(f"bars[1]: {expected}")


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-30, max_value=1e30), st.floats(min_value=0, max_value=1e160))
def test_the_bounds_are_exact_in_both_paths(price: float, volume: float) -> None:
    """A bar at any price and volume is accepted, by the fast and by the checked path,
    exactly when the price is inside MIN_PRICE..MAX_PRICE and the volume below MAX_VOLUME."""
    value = dumps(bar(open=price, high=price, low=price, close=price, volume=volume))
    inside = MIN_PRICE <= price <= MAX_PRICE and volume <= MAX_VOLUME
    assert (decoded_or_none(_decode_checked, value) is not None) == inside
    assert (_decode_fast(value) is not None) == inside


def test_the_price_bounds_themselves_are_valid() -> None:
    for price in (MIN_PRICE, MAX_PRICE):
        value = dumps(bar(open=price, high=price, low=price, close=price, volume=MAX_VOLUME))
        assert _decode_fast(value) == _decode_checked(value) != []


def test_high_below_open_or_close_is_invalid() -> None:
    """high must be >= max(open, close); the reason shows both numbers."""
    reason = reason_of(dumps(bar(high=104.0)))
    assert "high 104.0" in reason
    assert "105.0" in reason


def test_low_above_open_or_close_is_invalid() -> None:
    """low must be <= min(open, close); the reason shows both numbers."""
    reason = reason_of(dumps(bar(low=101.0)))
    assert "low 101.0" in reason
    assert "100.0" in reason


def test_unknown_field_is_invalid_and_named() -> None:
    """Extra fields are rejected, naming the field."""
    assert "unknown field 'price'" in reason_of(dumps(bar(price=1.0)))


def test_missing_field_is_invalid_and_named() -> None:
    """A missing field is reported by name."""
    message = bar()
    del message["volume"]
    assert "missing field 'volume'" in reason_of(dumps(message))


def test_duplicate_json_keys_are_invalid() -> None:
    """A key given twice is ambiguous and rejected."""
    text = json.dumps(bar())[:-1] + ', "close": 1.0}'
    assert "duplicate key 'close'" in reason_of(text.encode())


def test_key_must_match_symbol() -> None:
    """A present Kafka key different from the symbol is invalid; a matching one is fine."""
    assert decode_bar_message(dumps(bar()), key=b"BTCUSDT")[0].symbol == "BTCUSDT"
    assert "key 'ETHUSDT' does not match symbol 'BTCUSDT'" in reason_of(
        dumps(bar()), key=b"ETHUSDT"
    )
    assert "does not match" in reason_of(dumps(bar()), key=b"")
    assert "not UTF-8" in reason_of(dumps(bar()), key=b"\xff")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "null"),
        (b"", "empty"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"{", "not valid JSON"),
        (b'{"symbol": "BTCUSDT",}', "not valid JSON"),
        (b"[1, 2]", "JSON object, got list"),
        (b'"BTCUSDT"', "JSON object, got str"),
        (b"null", "JSON object, got NoneType"),
        (b"[" * 200_000, "nested too deeply"),
        (b'{"open": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_malformed_payloads_are_invalid(value: bytes | None, expected: str) -> None:
    """Null, empty, non-UTF-8, broken, non-object, deep and huge-number payloads fail cleanly."""
    assert expected in reason_of(value)


def test_oversized_payload_is_rejected_before_parsing() -> None:
    """A payload over 1 MiB is rejected on its length, even if it is not JSON at all."""
    reason = reason_of(b"\xff" * (MAX_MESSAGE_BYTES + 1))
    assert f"{MAX_MESSAGE_BYTES + 1} bytes" in reason


def test_batch_with_one_bad_bar_is_invalid_naming_its_index() -> None:
    """One bad bar invalidates the whole batch and the reason points at it."""
    bars = [batch_bar(i) for i in range(5)]
    bars[3]["open"] = -1.0
    reason = reason_of(dumps({"symbol": "BTCUSDT", "bars": bars}))
    assert reason.startswith("bars[3].open: ")


def test_batch_consistency_error_names_the_index() -> None:
    """A high/low violation inside a batch names the bar's index."""
    bars = [batch_bar(i) for i in range(3)]
    bars[2]["high"] = 1.0
    assert reason_of(dumps({"symbol": "BTCUSDT", "bars": bars})).startswith("bars[2]: high 1.0")


def test_batch_with_duplicate_ts_is_invalid() -> None:
    """Two bars with the same ts in one batch are rejected, naming both positions."""
    bars = [batch_bar(0), batch_bar(1), batch_bar(0)]
    reason = reason_of(dumps({"symbol": "BTCUSDT", "bars": bars}))
    assert "bars[2]: duplicate ts" in reason
    assert "bars[0]" in reason


def test_batch_bars_may_not_carry_a_symbol() -> None:
    """Bars inside a batch have no symbol field; the batch's symbol is the only one."""
    bars = [bar(ts=TS_2025)]
    assert "unknown field 'bars[0].symbol'" in reason_of(dumps({"symbol": "BTCUSDT", "bars": bars}))


def test_batch_size_limits() -> None:
    """An empty batch and one above MAX_BATCH_BARS are rejected; the maximum is accepted."""
    assert "at least 1" in reason_of(dumps({"symbol": "BTCUSDT", "bars": []}))
    full = [batch_bar(i) for i in range(MAX_BATCH_BARS)]
    assert len(decode_bar_message(dumps({"symbol": "BTCUSDT", "bars": full}))) == MAX_BATCH_BARS
    over = [*full, batch_bar(MAX_BATCH_BARS)]
    assert "at most" in reason_of(dumps({"symbol": "BTCUSDT", "bars": over}))


def test_mixed_forms_are_invalid() -> None:
    """A batch that also carries single-bar fields is rejected."""
    message = {"symbol": "BTCUSDT", "ts": TS_2025, "bars": [batch_bar(0)]}
    assert "unknown field 'ts'" in reason_of(dumps(message))


def test_reason_stays_one_short_line_for_huge_hostile_values() -> None:
    """A megabyte-scale value full of newlines and escapes still gives a short one-line reason."""
    hostile = "A\n\x1b[31m\u2028" * 50_000
    reason = reason_of(dumps(bar(symbol=hostile)))
    assert reason.startswith("symbol: invalid symbol 'A\\n")
    assert "\u2028" not in reason
    assert "\x1b" not in reason


def test_invalid_message_sanitises_its_reason() -> None:
    """InvalidMessage itself escapes control characters and caps the length."""
    exc = InvalidMessage("line one\nline two\r" + "x" * 1000)
    assert exc.reason.startswith("line one\\nline two\\r")
    assert len(exc.reason) == MAX_REASON_CHARS
    assert exc.reason.endswith("...")


def test_encode_bar_is_canonical() -> None:
    """encode_bar writes compact JSON in a fixed key order with a 'Z' RFC 3339 ts."""
    record = BarRecord("BTCUSDT", TS_2025, 100.0, 110.0, 90.0, 105.0, 12.5)
    assert encode_bar(record) == (
        b'{"symbol":"BTCUSDT","ts":"2025-01-01T00:00:00Z","open":100.0,"high":110.0,'
        b'"low":90.0,"close":105.0,"volume":12.5}'
    )


def test_encode_batch_round_trips_and_rejects_foreign_symbols() -> None:
    """encode_batch output decodes to the same records; a record of another symbol is refused."""
    records = [BarRecord("AAPL", TS_2025 + i, 1.0, 2.0, 0.5, 1.5, float(i)) for i in range(4)]
    assert decode_bar_message(encode_batch("AAPL", records), key=b"AAPL") == records
    with pytest.raises(ValueError, match="records\\[1\\] has symbol 'MSFT'"):
        encode_batch("AAPL", [records[0], BarRecord("MSFT", TS_2025, 1, 1, 1, 1, 1)])


@pytest.mark.parametrize(
    ("value", "key", "key_encoding"),
    [
        (b'{"symbol": "BTC\xc3\xa9"}', b"BTCUSDT", "utf-8"),
        (b"\x00\xff\xfe binary", b"\xff\x00", "base64"),
        (b"", None, None),
        (None, b"K", "utf-8"),
    ],
)
def test_dlq_payload_preserves_the_original_exactly(
    value: bytes | None, key: bytes | None, key_encoding: str | None
) -> None:
    """The DLQ record restores the original value and key byte for byte and says how."""
    record = json.loads(
        dlq_payload(value, "bad\nthing", topic="ctd.bars", partition=2, offset=7, key=key)
    )
    restored = (
        None if record["original_base64"] is None else base64.b64decode(record["original_base64"])
    )
    assert restored == value
    assert record["key_encoding"] == key_encoding
    if key_encoding == "utf-8":
        assert record["key"].encode() == key
    elif key_encoding == "base64":
        assert base64.b64decode(record["key"]) == key
    else:
        assert record["key"] is None
    assert (record["topic"], record["partition"], record["offset"]) == ("ctd.bars", 2, 7)
    assert record["reason"] == "bad\\nthing"
    assert datetime.fromisoformat(record["ts"]).tzinfo is not None


def test_dlq_payload_text_only_when_utf8_and_small() -> None:
    """original_text mirrors small UTF-8 values and is omitted for binary or large ones."""
    small = json.loads(
        dlq_payload(b'{"a": "\xc3\xa9"}', "r", topic="t", partition=0, offset=0, key=None)
    )
    assert small["original_text"] == '{"a": "é"}'
    binary = json.loads(dlq_payload(b"\xff", "r", topic="t", partition=0, offset=0, key=None))
    assert binary["original_text"] is None
    big_value = b"x" * (MAX_MESSAGE_BYTES + 10)
    big = json.loads(dlq_payload(big_value, "r", topic="t", partition=0, offset=0, key=None))
    assert big["original_text"] is None
    assert base64.b64decode(big["original_base64"]) == big_value
    assert big["original_size"] == len(big_value)


# --- properties -------------------------------------------------------------------------------

symbols = st.from_regex(SYMBOL_PATTERN, fullmatch=True)
prices = st.floats(min_value=1e-8, max_value=1e12, allow_nan=False, allow_infinity=False)
timestamps = st.integers(min_value=-2208988800, max_value=253402300799)


@st.composite
def records(draw: st.DrawFn, symbol: str | None = None) -> BarRecord:
    a, b, c, d = sorted(draw(st.lists(prices, min_size=4, max_size=4)))
    open_, close = draw(st.permutations([b, c]))
    volume = draw(st.floats(min_value=0, max_value=1e15, allow_nan=False, allow_infinity=False))
    return BarRecord(symbol or draw(symbols), draw(timestamps), open_, d, a, close, volume)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_invalid_message(value: bytes) -> None:
    """No byte string makes decoding raise anything but InvalidMessage."""
    try:
        decode_bar_message(value, key=value[:8])
    except InvalidMessage as exc:
        assert "\n" not in exc.reason
        assert len(exc.reason) <= MAX_REASON_CHARS


def _nested(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    # A named function: hypothesis reads its source to check that it recurses.
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    _nested,
    max_leaves=20,
)
near_miss_objects = st.fixed_dictionaries(
    {},
    optional={k: json_values | st.just(v) for k, v in {**bar(), "bars": [batch_bar(0)]}.items()},
)


@settings(max_examples=300, deadline=None)
@given(near_miss_objects)
def test_arbitrary_json_objects_raise_only_invalid_message(message: dict[str, Any]) -> None:
    """Near-miss JSON objects either decode to valid records or raise InvalidMessage."""
    try:
        decoded = decode_bar_message(json.dumps(message).encode())
    except InvalidMessage:
        return
    for record in decoded:
        assert SYMBOL_PATTERN.fullmatch(record.symbol)
        assert record.low <= min(record.open, record.close) <= max(record.open, record.close)
        assert max(record.open, record.close) <= record.high


@settings(max_examples=200, deadline=None)
@given(records())
def test_valid_bars_round_trip_through_encode_bar(record: BarRecord) -> None:
    """Every valid record survives encode_bar -> decode_bar_message unchanged."""
    assert decode_bar_message(encode_bar(record), key=record.symbol.encode()) == [record]


@settings(max_examples=100, deadline=None)
@given(
    symbols.flatmap(
        lambda s: st.lists(records(s), min_size=1, max_size=20, unique_by=lambda r: r.ts)
    )
)
def test_valid_batches_round_trip_through_encode_batch(batch: list[BarRecord]) -> None:
    """Every valid batch survives encode_batch -> decode_bar_message unchanged and in order."""
    assert decode_bar_message(encode_batch(batch[0].symbol, batch)) == batch


path_like = st.lists(
    st.sampled_from(["..", ".", "/", "\\", "A", "b", "0", "\x00", "\n", "é", "İ", " ", "~"]),
    min_size=1,
    max_size=12,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(path_like, st.text(max_size=40)).filter(lambda s: not SYMBOL_PATTERN.fullmatch(s)))
def test_path_like_and_unicode_symbols_are_rejected(symbol: str) -> None:
    """Any symbol outside the whitelist is rejected with 'invalid symbol'."""
    assert "invalid symbol" in reason_of(dumps(bar(symbol=symbol)))


# --- the fast path agrees with the checked one ------------------------------------------------


def decoded_or_none(decode: Any, value: bytes) -> list[BarRecord] | None:
    try:
        out: list[BarRecord] | None = decode(value)
    except InvalidMessage:
        return None
    return out


def assert_fast_agrees(value: bytes) -> None:
    """The fast path never accepts what the checked one rejects, nor decodes it differently."""
    fast = _decode_fast(value)
    if fast is not None:
        assert decoded_or_none(_decode_checked, value) == fast


@settings(max_examples=300, deadline=None)
@given(near_miss_objects)
def test_fast_path_agrees_on_near_miss_objects(message: dict[str, Any]) -> None:
    assert_fast_agrees(json.dumps(message).encode())


json_bytes = st.sampled_from(
    [
        b'"',
        b",",
        b":",
        b"{",
        b"}",
        b"[",
        b"]",
        b" ",
        b"\\",
        b"e",
        b"-",
        b"0",
        b"1",
        b".",
        b"t",
        b"z",
        b"T",
        b"Z",
        b'"ts":1,',
        b'"open":2,',
        b'"symbol":"B",',
        b"\\u0074",
    ]
)


@settings(max_examples=500, deadline=None)
@given(
    symbols.flatmap(
        lambda s: st.lists(records(s), min_size=1, max_size=3, unique_by=lambda r: r.ts)
    ),
    st.booleans(),
    st.lists(st.tuples(st.integers(min_value=0), json_bytes, st.booleans()), max_size=3),
)
def test_fast_path_agrees_on_mutated_messages(
    batch: list[BarRecord], single: bool, edits: list[tuple[int, bytes, bool]]
) -> None:
    """Valid messages with bytes spliced in or overwritten: duplicate keys, escapes, 't'/'z'..."""
    value = encode_bar(batch[0]) if single else encode_batch(batch[0].symbol, batch)
    for at, text, overwrite in edits:
        i = at % (len(value) + 1)
        value = value[:i] + text + value[i + overwrite :]
    assert_fast_agrees(value)


@pytest.mark.parametrize(
    "ts",
    [
        "2025-01-01t00:00:00z",
        "2025-01-01T00:00:00z",
        "2025-01-01 00:00:00Z",
        "2025-01-01T00:00Z",
        "20250101T000000Z",
        "2025-01-01T00:00:00.000Z",
        "2025-01-01T00:00:00.5Z",
        "2025-01-01T00:00:00.0000001Z",
        "2025-01-01T00:00:00-00:00",
        "2025-01-01T00:00:00",
        "2025-W01-1T00:00:00Z",
        "\u0032025-01-01T00:00:00Z",
        -2208988801,
        253402300800,
        10**30,
    ],
)
def test_fast_path_agrees_on_timestamp_spellings(ts: object) -> None:
    assert_fast_agrees(dumps(bar(ts=ts)))
    assert_fast_agrees(dumps({"symbol": "A", "bars": [{**batch_bar(0), "ts": ts}]}))


@pytest.mark.parametrize(
    "value",
    [
        dumps(bar()),
        dumps(bar(ts=TS_2025, open=100, high=110, low=90, close=105, volume=0)),
        dumps({"symbol": "ETH-USD", "bars": [batch_bar(i) for i in range(3)]}),
        dumps({"bars": [batch_bar(0)], "symbol": "ETH-USD"}),
        b'{ "symbol" : "X1", "ts" : "2025-01-01T00:00:00+02:00", "open" : 1, "high" : 1,'
        b' "low" : 1, "close" : 1, "volume" : 0 }',
    ],
)
def test_ordinary_messages_take_the_fast_path(value: bytes) -> None:
    fast = _decode_fast(value)
    assert fast is not None
    assert fast == _decode_checked(value)


@pytest.mark.parametrize(
    "value",
    [
        b'{"symbol":"A","ts":1735689600,"open":1,"open":1,"high":1,"low":1,"close":1,"volume":0}',
        b'{"symbol":"A","bars":[{"ts":1735689600,"ts":"2025-01-01T00:00:00Z","open":1,"high":1,'
        b'"low":1,"close":1,"volume":0}]}',
        b'{"symbol":"A","symbol":"A","bars":[{"ts":1735689600,"open":1,"high":1,"low":1,'
        b'"close":1,"volume":0}]}',
    ],
)
def test_duplicate_keys_leave_the_fast_path_and_are_rejected(value: bytes) -> None:
    assert _decode_fast(value) is None
    assert "duplicate key" in reason_of(value)
