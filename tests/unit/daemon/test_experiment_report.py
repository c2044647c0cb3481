"""Pure parts of the experiment report: the multiplicity adjustment of its paired tests."""

from __future__ import annotations

import pytest

from daemon.cli.experiment_report import holm


def test_holm_adjusts_step_down_and_stays_monotone() -> None:
    """Holm multiplies the k-th smallest p by (m - k + 1), never decreasing, capped at 1."""
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert holm([]) == []
