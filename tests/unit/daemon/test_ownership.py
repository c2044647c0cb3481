"""Which partitions a daemon acts for, and the claim its registry writes carry."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.fleet.ownership import Ownership, Partition, member_id
from deploy.errors import FencedError
from deploy.registry import Claim

BARS = "ctd.bars"


def _ownership(known: dict[str, Partition]) -> Ownership:
    return Ownership("m1", lambda: dict(known))


def test_an_assignment_reports_what_was_gained_and_lost() -> None:
    own = _ownership({})
    assert own.assign({(BARS, 0): 1, (BARS, 1): 1}) == ({(BARS, 0), (BARS, 1)}, set())
    assert own.assign({(BARS, 1): 2, (BARS, 2): 2}) == ({(BARS, 2)}, {(BARS, 0)})
    assert own.partitions() == {(BARS, 1): 2, (BARS, 2): 2}


def test_claims_carry_the_generation_of_the_symbols_partition() -> None:
    known = {"AAA": (BARS, 0), "BBB": (BARS, 1)}
    own = _ownership(known)
    own.assign({(BARS, 0): 3})
    assert own.claim("AAA") == Claim("m1", 3)
    assert own.owns("AAA") and not own.owns("BBB")
    with pytest.raises(FencedError):
        own.claim("BBB")  # another daemon's partition
    with pytest.raises(FencedError):
        own.claim("CCC")  # no bar of it stored yet: no partition known
    known["CCC"] = (BARS, 0)  # a symbol's first bar arrives: looked up afresh
    assert own.claim("CCC") == Claim("m1", 3)
    assert own.served() == {"AAA", "CCC"}
    assert own.symbols_of([(BARS, 1)]) == {"BBB"}


def test_a_member_id_is_the_instance_id_or_one_kept_in_the_data_dir(tmp_path: Path) -> None:
    assert member_id("ctd-0", tmp_path / "member") == "ctd-0"
    assert not (tmp_path / "member").exists()
    first = member_id(None, tmp_path / "member")
    assert first and member_id(None, tmp_path / "member") == first  # a restart keeps it
    assert member_id(None, tmp_path / "other") != first
