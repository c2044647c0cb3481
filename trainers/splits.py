"""Chronological train / validation / test splits with an embargo gap.

Rows are in time order and never shuffled. ``embargo`` rows are dropped between
train|val and val|test so that no feature window or label window straddles two
parts; callers pass ``FEATURE_SPEC.lookback + FEATURE_SPEC.label_horizon``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainers.errors import InsufficientDataError, InvalidInputError


@dataclass(frozen=True, slots=True)
class Split:
    """Row ranges of one split: ``train``, gap, ``val``, gap, ``test`` (step-1 slices)."""

    train: slice
    val: slice
    test: slice
    embargo: int

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: each part as ``[start, stop)`` row indices."""
        return {
            "train": [self.train.start, self.train.stop],
            "val": [self.val.start, self.val.stop],
            "test": [self.test.start, self.test.stop],
            "embargo": self.embargo,
        }


def _check(n: int, val_fraction: float, test_fraction: float, embargo: int, min_rows: int) -> None:
    if n < 0:
        raise InvalidInputError(f"n must be >= 0, got {n}")
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise InvalidInputError(f"{name} must be in (0, 1), got {frac!r}")
    if val_fraction + test_fraction >= 1.0:
        raise InvalidInputError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}"
        )
    if embargo < 0:
        raise InvalidInputError(f"embargo must be >= 0, got {embargo}")
    if min_rows < 1:
        raise InvalidInputError(f"min_rows must be >= 1, got {min_rows}")


def _part_sizes(
    n: int, val_fraction: float, test_fraction: float, embargo: int
) -> tuple[int, int, int]:
    """(train, val, test) sizes: fractions of the rows left after both gaps; train gets the rest."""
    usable = max(n - 2 * embargo, 0)
    n_val = math.floor(usable * val_fraction)
    n_test = math.floor(usable * test_fraction)
    return usable - n_val - n_test, n_val, n_test


def _build(end: int, n_train: int, n_val: int, n_test: int, embargo: int) -> Split:
    test = slice(end - n_test, end)
    val = slice(test.start - embargo - n_val, test.start - embargo)
    train = slice(val.start - embargo - n_train, val.start - embargo)
    return Split(train=train, val=val, test=test, embargo=embargo)


def _require(what: str, have: int, min_rows: int) -> None:
    if have < min_rows:
        raise InsufficientDataError(what, have, min_rows)


def chronological_split(
    n: int, *, val_fraction: float, test_fraction: float, embargo: int, min_rows: int = 30
) -> Split:
    """Split ``n`` time-ordered rows into train, val, test (in that order), gaps between.

    Val and test get ``floor(fraction x (n - 2 x embargo))`` rows each; train gets
    the rest, starting at row 0; test ends at row ``n``. Raises
    InsufficientDataError if any part has fewer than ``min_rows`` rows.
    """
    _check(n, val_fraction, test_fraction, embargo, min_rows)
    n_train, n_val, n_test = _part_sizes(n, val_fraction, test_fraction, embargo)
    where = f"of {n} rows (embargo {embargo})"
    _require(f"the test part {where}", n_test, min_rows)
    _require(f"the validation part {where}", n_val, min_rows)
    _require(f"the train part {where}", n_train, min_rows)
    return _build(n, n_train, n_val, n_test, embargo)


def walk_forward_splits(
    n: int,
    *,
    folds: int,
    val_fraction: float,
    test_fraction: float,
    embargo: int,
    min_rows: int = 30,
) -> list[Split]:
    """``folds`` expanding-window splits, oldest first; the last is ``chronological_split(n)``.

    Every fold has the last fold's val and test sizes; each earlier fold ends one
    test block earlier, so the test blocks tile the end of the data without
    overlap and train grows from fold to fold. Raises InsufficientDataError if
    the first fold's train part has fewer than ``min_rows`` rows.
    """
    if folds < 1:
        raise InvalidInputError(f"folds must be >= 1, got {folds}")
    last = chronological_split(
        n,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        embargo=embargo,
        min_rows=min_rows,
    )
    n_val = last.val.stop - last.val.start
    n_test = last.test.stop - last.test.start
    first_train = last.train.stop - (folds - 1) * n_test
    _require(
        f"the first train part of {folds} walk-forward folds over {n} rows (embargo {embargo})",
        first_train,
        min_rows,
    )
    splits = []
    for back in range(folds - 1, 0, -1):
        end = n - back * n_test
        n_train = end - n_test - n_val - 2 * embargo
        splits.append(_build(end, n_train, n_val, n_test, embargo))
    splits.append(last)
    return splits
