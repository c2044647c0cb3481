"""Post-training quality gates: boundaries, missing values, reasons, the ranking score."""

from __future__ import annotations

import json
import math

import pytest

from monitors.gates import (
    GateConfig,
    PairedCounts,
    baseline_significance_gate,
    beats_baseline_gate,
    bootstrap_alpha,
    candidate_score,
    evaluate_gates,
    fold_stability_gate,
    min_test_rows_gate,
    onnx_parity_gate,
    train_val_gap_gate,
    training_health_gate,
    val_test_consistency_gate,
)


def accs(
    train: float | None, val: float | None, test: float | None
) -> dict[str, dict[str, float | None]]:
    return {"train": {"accuracy": train}, "val": {"accuracy": val}, "test": {"accuracy": test}}


@pytest.mark.parametrize(
    ("train", "val", "passed"),
    [
        (0.70, 0.50, False),  # exactly at 0.20: the gap must be strictly below
        (0.699, 0.50, True),
        (0.701, 0.50, False),
        (0.50, 0.60, True),  # val above train is no overfitting
    ],
)
def test_train_val_gap_boundary(train, val, passed):
    """The train-val gap gate passes only when train - val is strictly below the maximum."""
    verdict = train_val_gap_gate(accs(train, val, 0.5), 0.20)
    assert verdict.passed is passed
    assert verdict.value == pytest.approx(train - val)
    assert verdict.threshold == 0.20


def test_train_val_gap_reason_names_numbers():
    """A failing gap verdict says by how much, against which threshold."""
    verdict = train_val_gap_gate(accs(0.743, 0.5, 0.5), 0.20)
    assert verdict.reason == "train-val gap 0.243 exceeds 0.200"


@pytest.mark.parametrize(
    ("val", "test", "passed"),
    [
        (0.55, 0.50, True),  # exactly 0.05 apart is still consistent
        (0.50, 0.55, True),
        (0.551, 0.50, False),
        (0.50, 0.551, False),
    ],
)
def test_val_test_consistency_boundary(val, test, passed):
    """Val and test accuracy may differ by at most the maximum, in either direction."""
    verdict = val_test_consistency_gate(accs(0.6, val, test), 0.05)
    assert verdict.passed is passed
    assert verdict.value == pytest.approx(abs(val - test))


@pytest.mark.parametrize(("test", "passed"), [(0.52, False), (0.521, True), (0.519, False)])
def test_beats_baseline_boundary(test, passed):
    """A candidate must be strictly more accurate on test than the baseline; a tie fails."""
    verdict = beats_baseline_gate(accs(0.6, 0.55, test), {"accuracy": 0.52})
    assert verdict.passed is passed
    assert verdict.threshold == 0.52
    assert "baseline 0.520" in verdict.reason


@pytest.mark.parametrize(("diff", "passed"), [(1e-4, True), (1.01e-4, False), (0.0, True)])
def test_onnx_parity_boundary(diff, passed):
    """Parity passes up to and including the tolerance."""
    verdict = onnx_parity_gate(diff, 1e-4)
    assert verdict.passed is passed
    assert verdict.value == diff


@pytest.mark.parametrize(
    "verdict",
    [
        train_val_gap_gate(accs(None, 0.5, 0.5), 0.2),
        train_val_gap_gate(accs(0.6, math.nan, 0.5), 0.2),
        val_test_consistency_gate(accs(0.6, 0.5, None), 0.05),
        val_test_consistency_gate({"train": {"accuracy": 0.6}}, 0.05),
        beats_baseline_gate(accs(0.6, 0.5, 0.6), {"accuracy": None}),
        beats_baseline_gate(accs(0.6, 0.5, None), {"accuracy": 0.5}),
        onnx_parity_gate(None, 1e-4),
        onnx_parity_gate(math.nan, 1e-4),
        onnx_parity_gate(math.inf, 1e-4),
    ],
)
def test_missing_inputs_fail(verdict):
    """A gate whose input is missing or NaN fails and says what is missing."""
    assert verdict.passed is False
    assert verdict.value is None
    assert "missing" in verdict.reason


def test_evaluate_gates_order_and_pass():
    """evaluate_gates returns every gate in a fixed order, all passing for a sound candidate."""
    verdicts = evaluate_gates(
        accs(0.62, 0.58, 0.57),
        {"accuracy": 0.51},
        3e-7,
        GateConfig(),
        PairedCounts(60, 35),
        test_rows=400,
    )
    assert [v.gate for v in verdicts] == [
        "min_test_rows",
        "train_val_gap",
        "val_test_consistency",
        "beats_baseline",
        "beats_baseline_significant",
        "training_health",
        "onnx_parity",
    ]
    assert all(v.passed for v in verdicts)


def test_evaluate_gates_uses_config_thresholds():
    """Thresholds come from GateConfig, and the baseline gate can be switched off."""
    config = GateConfig(
        max_train_val_gap=0.01,
        max_val_test_diff=0.5,
        require_beat_baseline=False,
        max_parity_diff=1e-9,
    )
    verdicts = {
        v.gate: v for v in evaluate_gates(accs(0.62, 0.58, 0.40), {"accuracy": 0.9}, 1e-6, config)
    }
    assert set(verdicts) == {
        "min_test_rows",
        "train_val_gap",
        "val_test_consistency",
        "training_health",
        "onnx_parity",
    }
    assert verdicts["train_val_gap"].passed is False
    assert verdicts["val_test_consistency"].passed is True
    assert verdicts["onnx_parity"].passed is False


@pytest.mark.parametrize(
    ("wins", "losses", "alpha", "passed"),
    [
        (60, 35, 0.05, True),  # p ~ 0.0067
        (55, 45, 0.05, False),  # p ~ 0.18: better on paper, not significantly
        (9, 1, 0.05, True),  # p = 11/1024 ~ 0.0107
        (8, 2, 0.05, False),  # p = 56/1024 ~ 0.0547
        (0, 0, 0.05, False),  # no discordant pairs: no evidence
    ],
)
def test_baseline_significance_boundaries(wins, losses, alpha, passed):
    """The one-sided exact sign test on discordant pairs passes only at p <= alpha."""
    verdict = baseline_significance_gate(PairedCounts(wins, losses), alpha)
    assert verdict.passed is passed
    assert f"{wins} vs {losses}" in verdict.reason


def test_baseline_significance_p_value_matches_exact_tail():
    """p-value equals the exact binomial tail computed by hand: 9 of 10 -> 11/1024."""
    assert PairedCounts(9, 1).p_value == pytest.approx(11 / 1024)
    assert PairedCounts(10, 0).p_value == pytest.approx(1 / 1024)


def test_baseline_significance_missing_counts_fail():
    """Without a paired comparison the significance gate fails and says what is missing."""
    verdict = baseline_significance_gate(None, 0.05)
    assert verdict.passed is False and "missing" in verdict.reason


@pytest.mark.parametrize(("rows", "passed"), [(99, False), (100, True), (None, False)])
def test_min_test_rows_boundary(rows, passed):
    """The test split needs at least min_test_rows rows; an unknown size fails."""
    assert min_test_rows_gate(rows, 100).passed is passed


@pytest.mark.parametrize(("std", "passed"), [(0.03, True), (0.0301, False), (None, False)])
def test_fold_stability_boundary(std, passed):
    """Fold accuracy std passes up to and including the maximum; missing fails."""
    assert fold_stability_gate(std, 0.03).passed is passed


def test_fold_stability_runs_only_when_configured():
    """Without max_fold_accuracy_std there is no fold gate; with it, the std is judged."""
    args = (accs(0.62, 0.58, 0.57), {"accuracy": 0.51}, 3e-7)
    off = evaluate_gates(*args, GateConfig(), PairedCounts(60, 35), test_rows=400)
    on = evaluate_gates(
        *args,
        GateConfig(max_fold_accuracy_std=0.02),
        PairedCounts(60, 35),
        test_rows=400,
        fold_accuracy_std=0.05,
    )
    assert "fold_stability" not in {v.gate for v in off}
    assert {v.gate: v.passed for v in on}["fold_stability"] is False


def test_bootstrap_alpha_spends_at_most_alpha_in_total():
    """Per-attempt levels halve, then shrink quadratically, and never sum above alpha."""
    levels = [bootstrap_alpha(0.05, k) for k in range(1, 10_001)]
    assert levels[:3] == pytest.approx([0.025, 0.05 / 6, 0.05 / 12])
    assert sum(levels) <= 0.05
    assert sum(levels) > 0.0499
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        bootstrap_alpha(0.05, 0)


@pytest.mark.parametrize(
    ("kinds", "passed"),
    [
        ((), True),
        (("overfitting", "exploding_gradients"), True),  # warnings, not blockers
        (("divergence",), False),
        (("overfitting", "non_finite"), False),
        (None, False),
    ],
)
def test_training_health_blocks_diverged_runs(kinds, passed):
    """A run that raised a blocking warning (divergence, non-finite) fails; others pass."""
    verdict = training_health_gate(kinds, GateConfig().blocking_warnings)
    assert verdict.passed is passed
    if kinds and not passed:
        assert all(k in verdict.reason for k in kinds if k in ("divergence", "non_finite"))


def test_verdict_to_dict_is_json():
    """A verdict serialises to plain JSON with all its fields."""
    verdict = train_val_gap_gate(accs(0.9, 0.5, 0.5), 0.2)
    data = json.loads(json.dumps(verdict.to_dict(), allow_nan=False))
    assert data == {
        "gate": "train_val_gap",
        "passed": False,
        "value": pytest.approx(0.4),
        "threshold": 0.2,
        "reason": "train-val gap 0.400 exceeds 0.200",
    }


def test_candidate_score_formula():
    """Score is test accuracy minus half the train-val gap."""
    assert candidate_score(accs(0.70, 0.60, 0.58)) == pytest.approx(0.58 - 0.05)
    assert candidate_score(accs(0.55, 0.60, 0.58)) == pytest.approx(0.58 + 0.025)


def test_candidate_score_missing_is_minus_infinity():
    """A candidate without all three accuracies ranks below every real one."""
    assert candidate_score(accs(0.7, None, 0.6)) == -math.inf
