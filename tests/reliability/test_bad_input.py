"""Bad input at volume: 1,000 generated bad messages mixed with good ones.

What counts as bad is the bar contract (DESIGN.md, daemon/events.py): a
message that is not a UTF-8 JSON object of the single or batch form with a
whitelisted symbol, finite positive prices with consistent high/low, a finite
non-negative volume, a timestamp in 1900..9999 at whole seconds with a
timezone, distinct timestamps within one batch, a key equal to the symbol, at
most 1 MiB. Out-of-order and repeated timestamps ACROSS messages are valid
(late data and re-sends happen; the upsert by (symbol, ts) is idempotent), so
the good messages here arrive shuffled and partly twice and must be stored once.

The generator is seeded (not hypothesis: one daemon run has to judge all 1,000
messages at once, which rules out per-example shrinking); every category of
the issue is covered in rotation and each generated message is checked to be
rejected by the decoder before it is sent.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import InvalidMessage
from daemon.kafka.bars import decode_bar_message, encode_bar, encode_batch
from daemon.settings import Settings
from tests.support import reliability as rel
from tests.support.helpers import read_topic, wait_for
from trainers.data import BarRecord

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 4242
N_BAD = 1000
GOOD_SYMBOLS = ("GA", "GB.X", "GC_1", "GD-2")
BARS_PER_SYMBOL = 300
Message = tuple[bytes | None, bytes | None]  # (key, value)


def _good_dict(rng: random.Random, symbol: str = "GA") -> dict[str, Any]:
    b = rel.bar(symbol, rng.randrange(10_000, 20_000))
    return {
        "symbol": b.symbol,
        "ts": b.ts,
        "open": b.open,
        "high": b.high,
        "low": b.low,
        "close": b.close,
        "volume": b.volume,
    }


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


# -- categories of bad messages: each returns (category, key, value) -------------------
def random_bytes(rng: random.Random, _tag: str) -> Message:
    return rng.choice([None, b"GA", rng.randbytes(4)]), rng.randbytes(rng.randrange(0, 300))


def not_utf8(rng: random.Random, _tag: str) -> Message:
    text = _dump(_good_dict(rng)).decode()
    return None, text.replace('"GA"', '"G\xc9"').encode("latin-1")


def wrong_type(rng: random.Random, _tag: str) -> Message:
    d = _good_dict(rng)
    field = rng.choice(["ts", "open", "high", "low", "close", "volume", "symbol"])
    wrong: list[Any] = [[1.0], {"v": 1}, None, True]
    wrong += {"symbol": [15, 1.5], "ts": [1.7e9 + 0.5, 1.7e9]}.get(field, ["1.5", "100"])
    d[field] = rng.choice(wrong)
    return None, _dump(d)


def extreme_number(rng: random.Random, _tag: str) -> Message:
    d = _good_dict(rng)
    field, value = rng.choice(
        [
            ("open", -d["open"]),
            ("close", 0.0),
            ("low", -0.0),
            ("volume", -1e-9),
            ("ts", (d["ts"]) * 1000),  # milliseconds sent as seconds
            ("ts", -(10**12)),
            ("ts", 10**30),
            ("high", d["low"] / 2),  # high below low
            ("low", d["high"] * 2),
        ]
    )
    d[field] = value
    return b"GA", _dump(d)


def overflow(rng: random.Random, _tag: str) -> Message:
    d = _good_dict(rng)
    field = rng.choice(["open", "high", "close", "volume"])
    literal = rng.choice(["1e400", "-1e400", "9" * 5000])  # inf after parsing; digit limit
    text = _dump(d).decode().replace(f'"{field}": {json.dumps(d[field])}', f'"{field}": {literal}')
    return b"GA", text.encode()


def nan_inf(rng: random.Random, _tag: str) -> Message:
    d = _good_dict(rng)
    d[rng.choice(["open", "high", "low", "close", "volume"])] = rng.choice(
        [math.nan, math.inf, -math.inf]
    )
    return b"GA", _dump(d)


def bad_symbol(rng: random.Random, tag: str) -> Message:
    symbol = rng.choice(
        [
            "../x",
            "..",
            ".",
            "a/b",
            "GA/../../etc",
            f"/tmp/ctd-escape-{tag}",  # an absolute path must not be created
            "C:\\evil",
            "~root",
            "GA\x00",
            "GA\n",
            "ビットコイン",
            "btcusdt",
            "",
            " GA",
            "\u202eAG",
            "\ud800",
            "G" * 33,
            "-GA",
            "🚀",
        ]
    )
    d = _good_dict(rng)
    d["symbol"] = symbol
    key = rng.choice([None, symbol.encode("utf-8", "surrogatepass")])
    return key, _dump(d)


def key_mismatch(rng: random.Random, tag: str) -> Message:
    d = _good_dict(rng)
    return rng.choice([b"GB.X", b"../GA", b"", rng.randbytes(3)]), _dump(d)


def bad_timestamp(rng: random.Random, _tag: str) -> Message:
    d = _good_dict(rng)
    d["ts"] = rng.choice(
        [
            "2025-01-01T00:00:00",  # no timezone
            "2025-01-01T00:00:00.500Z",  # sub-second
            "yesterday",
            "2025-13-01T00:00:00Z",
            "0000-01-01T00:00:00Z",
        ]
    )
    return b"GA", _dump(d)


def duplicate_ts_in_batch(rng: random.Random, _tag: str) -> Message:
    i = rng.randrange(10_000, 20_000)
    bars = [rel.bar("GA", i + k) for k in range(5)]
    batch = json.loads(encode_batch("GA", bars))
    batch["bars"][rng.randrange(1, 5)]["ts"] = batch["bars"][0]["ts"]
    return b"GA", _dump(batch)


def _missing_field(rng: random.Random, d: dict[str, Any]) -> Message:
    del d[rng.choice(list(d))]
    return None, _dump(d)


def _too_many_bars(_rng: random.Random, _d: dict[str, Any]) -> Message:
    """One bar more than a batch may hold, well under 1 MiB."""
    bars = [
        {"ts": rel.T0 + k, "open": 1, "high": 1, "low": 1, "close": 1, "volume": 0}
        for k in range(10_001)
    ]
    return b"GA", _dump({"symbol": "GA", "bars": bars})


def _deep(rng: random.Random, _d: dict[str, Any]) -> Message:
    depth = rng.randrange(2_000, 100_000)
    return None, b"[" * depth + b"]" * depth


_STRUCTURES: list[Callable[[random.Random, dict[str, Any]], Message]] = [
    _missing_field,
    lambda _r, d: (None, _dump({**d, "extra": 1})),
    lambda _r, d: (None, _dump(d)[:-1] + b', "close": 1.0}'),  # duplicate JSON key
    lambda _r, d: (None, _dump([d])),
    lambda r, _d: (None, r.choice([b"null", b"42", b'"GA"', b"{}", b"[]", b"true"])),
    lambda _r, _d: (b"GA", None),  # tombstone
    lambda _r, _d: (None, b""),
    _deep,
    lambda _r, _d: (b"GA", _dump({"symbol": "GA", "bars": []})),
    _too_many_bars,
    lambda _r, d: (None, b"\xef\xbb\xbf" + _dump(d)),  # UTF-8 byte-order mark
    lambda r, d: (None, _dump(d)[: r.randrange(1, 40)]),  # truncated
]


def bad_structure(rng: random.Random, _tag: str) -> Message:
    return rng.choice(_STRUCTURES)(rng, _good_dict(rng))


HUGE_SIZES = ((1 << 20) + 1, 1_300_000, 1_000_000, 900_000)


def huge(rng: random.Random, size: int) -> Message:
    """~1 MiB and more: over the limit (refused before parsing), or under it with an
    unknown field, too large to be copied whole into a DLQ record."""
    d = _good_dict(rng)
    d["comment"] = "x" * size
    return b"GA", _dump(d)


CATEGORIES: list[Callable[[random.Random, str], Message]] = [
    random_bytes,
    not_utf8,
    wrong_type,
    extreme_number,
    overflow,
    nan_inf,
    bad_symbol,
    key_mismatch,
    bad_timestamp,
    duplicate_ts_in_batch,
    bad_structure,
]


def bad_messages(rng: random.Random, tag: str) -> list[tuple[str, bytes | None, bytes | None]]:
    out = [("huge", *huge(rng, size)) for size in HUGE_SIZES]
    for i in range(N_BAD - len(HUGE_SIZES)):
        category = CATEGORIES[i % len(CATEGORIES)]
        out.append((category.__name__, *category(rng, tag)))
    for name, key, value in out:
        try:
            decode_bar_message(value, key)
        except InvalidMessage:
            continue
        raise AssertionError(f"{name} generated a valid message: {key!r} {(value or b'')[:200]!r}")
    return out


def good_messages(rng: random.Random) -> tuple[list[Message], list[BarRecord]]:
    """Singles and batches, shuffled (out of order), about a tenth of them sent twice."""
    messages: list[Message] = []
    bars: list[BarRecord] = []
    for symbol in GOOD_SYMBOLS:
        series = [rel.bar(symbol, i) for i in range(BARS_PER_SYMBOL)]
        bars += series
        i = 0
        while i < len(series):
            n = rng.choice([1, 1, 7, 25])
            chunk = series[i : i + n]
            value = encode_bar(chunk[0]) if n == 1 else encode_batch(symbol, chunk)
            messages.append((rng.choice([symbol.encode(), None]), value))
            i += n
    messages += rng.sample(messages, len(messages) // 10)
    rng.shuffle(messages)
    return messages, bars


def _tree(root: Path, skip: Path) -> set[str]:
    return {
        str(p.relative_to(root)) for p in root.rglob("*") if p != skip and skip not in p.parents
    }


@pytest.fixture
def cwd(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "cwd"
    path.mkdir()
    yield path


def test_a_thousand_bad_messages_go_to_the_dlq_and_every_good_bar_is_stored_once(
    settings_factory: Callable[..., Settings], tmp_path: Path, cwd: Path
) -> None:
    """Each bad message is on the DLQ once with a readable reason and its original bytes (or a
    reference), each good bar is stored once, the daemon stays up, and nothing is written
    outside CTD_DATA_DIR."""
    settings = settings_factory(
        http_port=rel.free_port(), min_bars=100_000, log_level="WARNING", log_format="json"
    )
    assert settings.kafka_bootstrap_servers is not None
    rng = random.Random(SEED)
    tag = os.urandom(4).hex()
    bad = bad_messages(rng, tag)
    good, good_bars = good_messages(rng)
    mixed: list[tuple[str | None, bytes | None, bytes | None]] = [
        *bad,
        *((None, k, v) for k, v in good),
    ]
    rng.shuffle(mixed)

    log = tmp_path / "daemon.log"
    log.touch()
    data = settings.data_dir
    outside_before = _tree(tmp_path, data)
    daemon = rel.DaemonProcess(settings, log, cwd=cwd)
    producer = rel.make_producer(settings.kafka_bootstrap_servers, max_request_size=4 << 20)
    try:
        daemon.start()
        sent = [
            (category, value, producer.send(settings.topic_bars, key=key, value=value))
            for category, key, value in mixed
        ]
        where: dict[tuple[int, int], tuple[str, bytes | None]] = {}
        for category, value, future in sent:
            meta = future.get(timeout=60)
            if category is not None:
                where[(meta.partition, meta.offset)] = (category, value)
        dlq = read_topic(settings.kafka_bootstrap_servers, settings.topic_dlq, N_BAD, timeout=90)
        wait_for(
            lambda: rel.stored_count(settings.paths.bars) >= len(good_bars),
            timeout=60,
            message="good bars stored",
        )
        assert daemon.alive(), daemon.log_tail()
        assert daemon.get("/healthz")[0] == 200
        assert daemon.get("/readyz")[0] == 200
        assert daemon.sample("ctd_dlq_messages_total", kind="message") == N_BAD
        assert daemon.sample("ctd_ingest_messages_total") == len(mixed)
        assert daemon.terminate() == 0, daemon.log_tail()
    finally:
        producer.close(timeout=5)
        daemon.reap_group()

    # Every bad message exactly once on the DLQ, with a reason and the way back to its bytes.
    records = [json.loads(r.value) for r in dlq]
    assert len(records) == N_BAD
    by_source = {(r["partition"], r["offset"]): r for r in records}
    assert set(by_source) == set(where)
    by_reference = 0
    for source, (category, value) in where.items():
        r = by_source[source]
        assert r["topic"] == settings.topic_bars
        reason = r["reason"]
        assert reason and reason.isprintable() and len(reason) <= 500, (category, reason)
        if r["original_base64"] is not None:
            assert base64.b64decode(r["original_base64"]) == value, category
        elif value is not None:  # too large to carry: the reason says where it is
            by_reference += 1
            assert f"offset {source[1]}" in reason and "too large" in reason, reason
    assert len(HUGE_SIZES) <= by_reference
    huge_reasons = [by_source[s]["reason"] for s, (c, _) in where.items() if c == "huge"]
    assert any("more than 1048576" in r for r in huge_reasons), huge_reasons
    symbol_reasons = [by_source[s]["reason"] for s, (c, _) in where.items() if c == "bad_symbol"]
    assert all("symbol" in r for r in symbol_reasons), symbol_reasons[:5]

    # Every good bar once, exact values, counters in agreement; nothing else stored.
    rel.assert_stored_exactly(settings.paths.bars, good_bars)

    # Nothing written outside the data directory: not in tmp, not in the daemon's cwd.
    assert _tree(tmp_path, data) == outside_before
    assert list(cwd.iterdir()) == []
    assert not Path(f"/tmp/ctd-escape-{tag}").exists()
    allowed = {
        "bars.sqlite",
        "bars.sqlite-wal",
        "bars.sqlite-shm",
        "predictions.sqlite",
        "predictions.sqlite-wal",
        "predictions.sqlite-shm",
        "registry",
        "staging",
        "member",
        "commands.secret",  # generated once at start-up (no CTD_COMMANDS_SECRET set)
    }
    assert {p.name for p in data.iterdir()} <= allowed
    registry = data / "registry"
    assert not registry.exists() or list(registry.iterdir()) == []
