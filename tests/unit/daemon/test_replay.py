"""Replay protection: a command id is accepted once per record, and memory stays bounded."""

from __future__ import annotations

import pytest

from daemon.kafka.replay import ReplayGuard

A, B, C = "a" * 32, "b" * 32, "c" * 32


def test_a_second_record_with_the_same_id_is_a_replay() -> None:
    guard = ReplayGuard()
    assert guard.replayed(A, (0, 5), expires_at=100.0, now=0.0) is False
    assert guard.replayed(A, (0, 9), expires_at=100.0, now=1.0) is True
    assert guard.replayed(A, (3, 5), expires_at=100.0, now=2.0) is True


def test_the_same_record_delivered_again_is_not_a_replay() -> None:
    """Kafka re-delivering an uncommitted offset passes (the ledger makes it a no-op)."""
    guard = ReplayGuard()
    assert guard.replayed(A, (0, 5), expires_at=100.0, now=0.0) is False
    assert guard.replayed(A, (0, 5), expires_at=100.0, now=1.0) is False


def test_an_id_is_forgotten_once_it_expires() -> None:
    """After its expiry a copy would be refused as expired, so the id is no longer held."""
    guard = ReplayGuard()
    guard.replayed(A, (0, 1), expires_at=10.0, now=0.0)
    guard.replayed(B, (0, 2), expires_at=20.0, now=0.0)
    assert guard.replayed(C, (0, 3), expires_at=30.0, now=15.0) is False
    assert len(guard) == 2  # A expired at 10
    assert guard.replayed(B, (0, 9), expires_at=20.0, now=15.0) is True


def test_memory_is_bounded_by_capacity_forgetting_the_id_closest_to_expiry() -> None:
    guard = ReplayGuard(capacity=2)
    guard.replayed(A, (0, 1), expires_at=50.0, now=0.0)
    guard.replayed(B, (0, 2), expires_at=10.0, now=0.0)
    guard.replayed(C, (0, 3), expires_at=60.0, now=0.0)
    assert len(guard) == 2
    assert guard.replayed(A, (0, 7), expires_at=50.0, now=1.0) is True
    assert guard.replayed(C, (0, 8), expires_at=60.0, now=1.0) is True
    assert guard.replayed(B, (0, 9), expires_at=10.0, now=1.0) is False  # B was forgotten


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity must be >= 1, got 0"):
        ReplayGuard(capacity=0)
