"""Chronological splits: order, embargo gaps, sizes, walk-forward folds."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainers.errors import InsufficientDataError, InvalidInputError
from trainers.splits import Split, chronological_split, walk_forward_splits


def size(s: slice) -> int:
    return int(s.stop - s.start)


def assert_well_formed(split: Split, n: int, min_rows: int) -> None:
    assert split.train.start == 0
    assert split.val.start - split.train.stop == split.embargo
    assert split.test.start - split.val.stop == split.embargo
    assert split.test.stop <= n
    for part in (split.train, split.val, split.test):
        assert part.step is None
        assert size(part) >= min_rows


def test_hand_computed_split():
    """1,000 rows, 15% / 15%, embargo 10: val and test get 147 rows, train the rest."""
    s = chronological_split(1000, val_fraction=0.15, test_fraction=0.15, embargo=10)
    assert s == Split(slice(0, 686), slice(696, 843), slice(853, 1000), 10)


def test_to_dict_is_json_ready():
    """A split serialises to [start, stop) pairs and the embargo."""
    s = chronological_split(1000, val_fraction=0.2, test_fraction=0.2, embargo=5)
    d = s.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d == {"train": [0, 594], "val": [599, 797], "test": [802, 1000], "embargo": 5}


@given(
    n=st.integers(0, 5000),
    val=st.floats(0.05, 0.4),
    test=st.floats(0.05, 0.4),
    embargo=st.integers(0, 100),
    min_rows=st.integers(1, 50),
)
def test_splits_are_ordered_gapped_and_cover_the_tail(n, val, test, embargo, min_rows):
    """Any accepted split is train < gap < val < gap < test ending at n; else it raises."""
    try:
        s = chronological_split(
            n, val_fraction=val, test_fraction=test, embargo=embargo, min_rows=min_rows
        )
    except InsufficientDataError as exc:
        assert exc.have < min_rows == exc.need
        return
    assert_well_formed(s, n, min_rows)
    assert s.test.stop == n
    assert size(s.train) + size(s.val) + size(s.test) + 2 * embargo == n


@pytest.mark.parametrize(
    ("n", "embargo", "part"),
    [(100, 0, "test"), (400, 150, "test"), (220, 10, "train")],
)
def test_too_few_rows_raise_naming_the_part(n, embargo, part):
    """A part below min_rows raises InsufficientDataError naming that part and the counts."""
    val = test = 0.45 if part == "train" else 0.2
    with pytest.raises(InsufficientDataError, match=rf"the {part} part of {n} rows") as info:
        chronological_split(n, val_fraction=val, test_fraction=test, embargo=embargo)
    assert info.value.need == 30


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "< 1"),
        ({"embargo": -1}, "embargo"),
        ({"min_rows": 0}, "min_rows"),
        ({"val_fraction": float("nan")}, "val_fraction"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    """Nonsensical fractions, embargo or min_rows raise InvalidInputError naming the argument."""
    args = {"val_fraction": 0.2, "test_fraction": 0.2, "embargo": 5, "min_rows": 30} | kwargs
    with pytest.raises(InvalidInputError, match=match):
        chronological_split(1000, **args)


def test_walk_forward_last_fold_is_the_chronological_split():
    """The last fold equals chronological_split, so fold metrics extend the main split."""
    kw: dict[str, Any] = {"val_fraction": 0.15, "test_fraction": 0.1, "embargo": 12}
    folds = walk_forward_splits(2000, folds=4, **kw)
    assert folds[-1] == chronological_split(2000, **kw)


@given(
    n=st.integers(100, 5000),
    folds=st.integers(1, 6),
    val=st.floats(0.05, 0.3),
    test=st.floats(0.05, 0.3),
    embargo=st.integers(0, 80),
)
def test_walk_forward_folds_expand_and_tile_the_test_blocks(n, folds, val, test, embargo):
    """Folds grow train, keep val/test sizes, and their test blocks tile the data's end."""
    kw = {"val_fraction": val, "test_fraction": test, "embargo": embargo}
    try:
        splits = walk_forward_splits(n, folds=folds, **kw)
    except InsufficientDataError as exc:
        assert exc.have < exc.need
        return
    assert len(splits) == folds
    for s in splits:
        assert_well_formed(s, n, 30)
        assert size(s.val) == size(splits[-1].val)
        assert size(s.test) == size(splits[-1].test)
    for earlier, later in itertools.pairwise(splits):
        assert earlier.test.stop == later.test.start
        assert size(earlier.train) < size(later.train)
    assert splits[-1].test.stop == n


def test_walk_forward_rejects_too_many_folds_and_zero_folds():
    """Folds that leave the first train part short raise; folds < 1 is invalid."""
    kw: dict[str, Any] = {"val_fraction": 0.2, "test_fraction": 0.2, "embargo": 0}
    assert len(walk_forward_splits(1000, folds=3, **kw)) == 3
    with pytest.raises(InsufficientDataError, match="first train part of 4 walk-forward folds"):
        walk_forward_splits(1000, folds=4, **kw)
    with pytest.raises(InvalidInputError, match="folds must be >= 1, got 0"):
        walk_forward_splits(1000, folds=0, **kw)
