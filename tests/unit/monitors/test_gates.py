"""Post-training quality gates: boundaries, missing values, reasons, the ranking score."""

from __future__ import annotations

import json
import math

import numpy as np
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
    min_test_accuracy_gate,
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


def sized(val: float, n_val: int, test: float, n_test: int) -> dict[str, dict[str, float]]:
    return {"val": {"accuracy": val, "n": n_val}, "test": {"accuracy": test, "n": n_test}}


@pytest.mark.parametrize(
    ("val", "test", "n", "passed"),
    [
        (0.62, 0.553, 340, True),  # 6.7 points apart: over 0.05, but p ~ 0.33 (noise)
        (0.62, 0.553, 20_000, False),  # the same gap on 20,000 rows each: p ~ 3e-4
        (0.70, 0.55, 2000, False),  # 15 points on 2,000 rows
        (0.60, 0.55, 100_000, True),  # precisely measured, but not over the threshold
        (0.70, 0.50, 340, False),  # 20 points on 340 rows: real instability
    ],
)
def test_val_test_consistency_fails_only_when_over_and_significant(val, test, n, passed):
    """Noise-aware: the gap must exceed the threshold significantly at the level."""
    verdict = val_test_consistency_gate(sized(val, n, test, n), 0.05, 0.05)
    assert verdict.passed is passed
    if not passed:
        assert ", significantly (p=" in verdict.reason


def test_val_test_consistency_p_value_is_the_one_sided_exceedance_test():
    """The p-value in the reason is P(Z >= (gap - 0.05) / se), computed by hand."""
    from scipy.stats import norm

    se = math.sqrt(0.62 * 0.38 / 340 + 0.553 * 0.447 / 340)
    p = norm.sf((0.067 - 0.05) / se)
    verdict = val_test_consistency_gate(sized(0.62, 340, 0.553, 340), 0.05, 0.05)
    assert f"p={p:.4f}" in verdict.reason
    assert verdict.passed is True


def test_val_test_consistency_without_row_counts_fails_when_alpha_is_set():
    """The significance needs the split sizes; missing ones fail rather than guess."""
    verdict = val_test_consistency_gate(accs(0.6, 0.6, 0.5), 0.05, 0.05)
    assert verdict.passed is False and "row count is missing" in verdict.reason


def rejection_rate(val_acc: float, test_acc: float, trials: int, alpha: float | None) -> float:
    rng = np.random.default_rng(7)
    n = 340
    val = rng.binomial(n, val_acc, trials) / n
    test = rng.binomial(n, test_acc, trials) / n
    verdicts = (
        val_test_consistency_gate(sized(v, n, t, n), 0.05, alpha)
        for v, t in zip(val, test, strict=True)
    )
    return float(np.mean([not v.passed for v in verdicts]))


def test_val_test_consistency_false_rejection_rate_of_good_models():
    """Simulation on 340 val / 340 test rows: a stable model of true accuracy 0.60 is
    rejected about one time in five by the bare threshold, far below 5% by the
    noise-aware gate; a model 15 points worse on test is still rejected most times."""
    bare = rejection_rate(0.60, 0.60, 4000, None)
    aware = rejection_rate(0.60, 0.60, 20_000, 0.05)
    unstable = rejection_rate(0.65, 0.50, 4000, 0.05)
    assert 0.12 < bare < 0.28
    # Expected ~0.003; 20,000 trials put the estimate within 0.0012 of it (3 SE).
    assert aware < 0.01
    assert unstable > 0.6


def paired(cand_only: int, base_only: int, rows: int = 1000, base_right: int = 520):
    return PairedCounts(cand_only, base_only, rows, base_right, "persistence")


@pytest.mark.parametrize(("cand_only", "base_only", "passed"), [(80, 80, False), (81, 80, True)])
def test_beats_baseline_boundary(cand_only, base_only, passed):
    """The candidate must be right more often than the baseline on the pooled rows; a tie fails."""
    verdict = beats_baseline_gate(paired(cand_only, base_only))
    assert verdict.passed is passed
    assert verdict.threshold == 0.52
    assert "persistence baseline 0.520 on 1000 rows" in verdict.reason


@pytest.mark.parametrize(("test", "passed"), [(0.55, False), (0.551, True), (None, False)])
def test_min_test_accuracy_floor(test, passed):
    """The optional absolute floor passes strictly above it; it is off unless configured."""
    assert min_test_accuracy_gate(accs(0.6, 0.55, test), 0.55).passed is passed
    gates = {
        v.gate for v in evaluate_gates(accs(0.6, 0.55, 0.5), 0.0, GateConfig(), paired(90, 40))
    }
    assert "min_test_accuracy" not in gates
    floor = GateConfig(min_test_accuracy=0.55)
    assert "min_test_accuracy" in {v.gate for v in evaluate_gates(accs(0.6, 0.55, 0.5), 0.0, floor)}


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
        beats_baseline_gate(None),
        beats_baseline_gate(PairedCounts(3, 1)),  # rows unknown
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
        3e-7,
        GateConfig(),
        PairedCounts(60, 35, 400, 204),
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
    verdicts = {v.gate: v for v in evaluate_gates(accs(0.62, 0.58, 0.40), 1e-6, config)}
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
    args = (accs(0.62, 0.58, 0.57), 3e-7)
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
