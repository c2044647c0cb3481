"""Return-target gates: loss gates on PairedLosses, the accuracy gates recorded as not
applied, and the skill score."""

from __future__ import annotations

import math

import pytest

from monitors.gates import GateConfig, evaluate_gates
from monitors.return_gates import (
    PairedLosses,
    beats_baseline_loss_gate,
    evaluate_return_gates,
    loss_significance_gate,
    return_candidate_score,
)


def losses(cand: float, base: float, p: float, rows: int = 900) -> PairedLosses:
    return PairedLosses(rows, 3, cand, base, 2.0, p, "zero", 5)


def test_significant_lower_loss_passes() -> None:
    """Lower MSE and a one-sided p at or below alpha pass both baseline gates."""
    assert beats_baseline_loss_gate(losses(0.9, 1.0, 0.01)).passed
    verdict = loss_significance_gate(losses(0.9, 1.0, 0.05), 0.05)
    assert verdict.passed and verdict.value == 0.05
    assert "Diebold-Mariano 2.000 (HAC lag 4)" in verdict.reason


def test_higher_loss_or_insignificance_fails() -> None:
    """Equal-or-higher MSE fails beats_baseline; p above alpha fails the significance gate."""
    assert not beats_baseline_loss_gate(losses(1.0, 1.0, 0.5)).passed
    assert not loss_significance_gate(losses(0.9, 1.0, 0.0501), 0.05).passed


def test_missing_comparison_fails() -> None:
    """No paired rows is no evidence: both baseline gates fail."""
    empty = PairedLosses(0, 0, None, None, 0.0, 1.0)
    assert not beats_baseline_loss_gate(empty).passed
    assert not loss_significance_gate(empty, 0.05).passed
    assert not beats_baseline_loss_gate(None).passed


def test_return_gates_have_the_direction_order_and_names() -> None:
    """Same gate names in the same order as for direction; accuracy gates pass as not
    applied, with the reason recorded."""
    config = GateConfig(max_fold_accuracy_std=0.05, min_test_accuracy=0.55)
    returns = evaluate_return_gates(1e-6, config, losses(0.9, 1.0, 0.01), test_rows=400)
    direction = evaluate_gates({}, 1e-6, config, None, test_rows=400)
    assert [v.gate for v in returns] == [v.gate for v in direction]
    assert all(v.passed for v in returns)
    skipped = {v.gate for v in returns if v.reason.startswith("not applied to return targets")}
    assert skipped == {
        "train_val_gap",
        "val_test_consistency",
        "min_test_accuracy",
        "fold_stability",
    }
    failing = evaluate_return_gates(1e-6, config, losses(0.9, 1.0, 0.2), test_rows=50)
    assert {v.gate for v in failing if not v.passed} == {
        "min_test_rows",
        "beats_baseline_significant",
    }
    off = evaluate_return_gates(1e-6, GateConfig(require_beat_baseline=False), None, test_rows=400)
    assert all(v.passed for v in off)


def split(rmse: float) -> dict[str, float | None]:
    return {"rmse": rmse}


def test_return_score_is_test_skill_minus_half_the_overfit() -> None:
    """skill = 1 - MSE / yardstick MSE per split; score = test - 0.5 (train - val)."""
    yard = {"train": split(1.0), "val": split(1.0), "test": split(2.0)}
    cand = {
        "train": split(math.sqrt(0.5)),
        "val": split(math.sqrt(0.9)),
        "test": split(math.sqrt(1.6)),
    }
    assert return_candidate_score(cand, yard) == pytest.approx((1 - 1.6 / 4) - 0.5 * (0.5 - 0.1))
    assert return_candidate_score({"train": split(1.0)}, yard) == -math.inf
    zero = {"train": split(0.0), "val": split(1.0), "test": split(1.0)}
    assert return_candidate_score(cand, zero) == -math.inf
