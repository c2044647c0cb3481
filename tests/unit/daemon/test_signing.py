"""The commands topic's wire format: signing, verification and each reason for refusal."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest

from daemon.actions import Command
from daemon.errors import InvalidCommand, UnverifiedCommand
from daemon.kafka.signing import SignedCommand, canonical, decode_command, sign_command

KEY = b"0123456789abcdef0123456789abcdef"
NOW = datetime(2026, 12, 7, 10, 15, tzinfo=UTC).timestamp()
SKEW = 300.0
ID = "9f1c0e2d3b4a59687766554433221100"
OTHER_KEY = b"another key, 32 bytes long......"


def _decode(value: bytes, key: bytes = KEY, now: float = NOW) -> SignedCommand:
    return decode_command(value, key, now=now, max_skew=SKEW)


def _resign(doc: dict[str, object], key: bytes = KEY) -> bytes:
    """``doc`` with a valid signature over its other fields (as a key holder would make it)."""
    fields = {k: v for k, v in doc.items() if k != "sig"}
    sig = hmac.new(key, canonical(fields), hashlib.sha256).hexdigest()
    return json.dumps({**fields, "sig": sig}).encode()


def _doc(command: Command | None = None, now: float = NOW) -> dict[str, object]:
    message = sign_command(command or Command("rollback", "BTCUSDT", id=ID), KEY, now=now)
    doc: dict[str, object] = json.loads(message)
    return doc


def test_the_signature_is_hmac_sha256_over_the_documented_canonical_json() -> None:
    """A fixed command signs to the HMAC of the exact canonical bytes the docstring defines
    (a test vector for other producers)."""
    command = Command("promote", "BTCUSDT", "bad fills: 3% slip", "operator:ann", True, ID)
    doc = json.loads(sign_command(command, KEY, now=NOW))
    expected_canonical = (
        b'{"action":"promote","actor":"operator:ann","force":true,'
        b'"id":"9f1c0e2d3b4a59687766554433221100","reason":"bad fills: 3% slip",'
        b'"symbol":"BTCUSDT","ts":"2026-12-07T10:15:00.000000Z","v":1}'
    )
    assert doc["sig"] == hmac.new(KEY, expected_canonical, hashlib.sha256).hexdigest()


def test_a_signed_command_round_trips_with_its_id_and_force() -> None:
    """Every field survives signing and verification, non-ASCII text included."""
    command = Command("promote", "ETHUSDT", "zu früh — trotzdem", "alice", force=True)
    signed = _decode(sign_command(command, KEY, now=NOW - 10))
    assert signed.command == command
    assert signed.signed_at == pytest.approx(NOW - 10)


def test_two_commands_get_different_ids() -> None:
    assert Command("retrain", "AAA").id != Command("retrain", "AAA").id


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (json.dumps({"action": "promote", "symbol": "BTCUSDT"}).encode(), "unsigned"),
        (sign_command(Command("rollback", "BTCUSDT"), OTHER_KEY), "bad_signature"),
        (json.dumps({**_doc(), "sig": None}).encode(), "unsigned"),
        (json.dumps({**_doc(), "sig": 12}).encode(), "bad_signature"),
        (json.dumps({**_doc(), "sig": "é" * 64}).encode(), "bad_signature"),
        (json.dumps({**_doc(), "action": "promote"}).encode(), "bad_signature"),
        (json.dumps({**_doc(), "force": True}).encode(), "bad_signature"),
        (json.dumps({**_doc(), "ts": "2026-12-07T10:15:01.000000Z"}).encode(), "bad_signature"),
        (sign_command(Command("rollback", "BTCUSDT"), KEY, now=NOW - SKEW - 1), "expired"),
        (sign_command(Command("rollback", "BTCUSDT"), KEY, now=NOW + SKEW + 1), "expired"),
    ],
    ids=[
        "no-sig", "wrong-key", "null-sig", "number-sig", "non-ascii-sig", "action-changed",
        "force-added", "ts-changed", "too-old", "from-the-future",
    ],
)  # fmt: skip
def test_unverifiable_commands_are_refused_with_their_reason(value: bytes, why: str) -> None:
    """Unsigned, badly signed (any field changed after signing) and expired commands raise
    UnverifiedCommand carrying the reason they are counted under."""
    with pytest.raises(UnverifiedCommand) as info:
        _decode(value)
    assert info.value.why == why


def test_a_command_inside_the_skew_window_is_accepted_either_way() -> None:
    for offset in (-SKEW + 1, SKEW - 1):
        assert _decode(sign_command(Command("retrain", "AAA"), KEY, now=NOW + offset))


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (b"", "empty"),
        (b"{", "Invalid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (_resign({**_doc(), "action": "delete"}), "action"),
        (_resign({**_doc(), "symbol": "../x"}), "invalid symbol"),
        (_resign({**_doc(), "extra": 1}), "extra"),
        (_resign({k: v for k, v in _doc().items() if k != "symbol"}), "symbol"),
        (_resign({**_doc(), "id": "not-hex"}), "id"),
        (_resign({**_doc(), "v": 2}), "v"),
        (_resign({**_doc(), "ts": "yesterday"}), "ts"),
        (_resign({**_doc(), "force": "yes"}), "force"),
        (_resign({**_doc(), "reason": "x" * 1001}), "reason"),
    ],
)
def test_malformed_commands_are_invalid_with_a_reason(value: bytes, needle: str) -> None:
    """A message that is not JSON, or correctly signed fields that do not form a command,
    raises InvalidCommand whose reason names the problem."""
    with pytest.raises(InvalidCommand) as info:
        _decode(value)
    assert needle.lower() in info.value.reason.lower()
