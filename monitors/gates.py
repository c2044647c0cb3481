"""Post-training quality gates: pure judgements of a finished candidate's metrics.

A candidate is a mapping ``{"train": {...}, "val": {...}, "test": {...}}`` of
metric dicts (the keys of ``trainers.metrics.classification_metrics``; only
``accuracy`` and ``n`` are read here). Accuracies are fractions in [0, 1], so a
gap of 0.20 is twenty percentage points. A gate whose inputs are missing
(``None``, NaN) fails: a candidate is never promoted on evidence nobody computed.

The baseline gates judge ``PairedCounts``: candidate and baseline on the same
out-of-sample rows (the test split plus the walk-forward folds' test blocks,
``trainers.baselines``), so the test has every honest row the run produced.

A ``return`` target's gates judge losses instead: ``monitors.return_gates``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scipy.stats import binom, norm

Metrics = Mapping[str, float | None]

# Differences are rounded before comparison so that "exactly at the threshold"
# means what it says: 0.70 - 0.50 is 0.19999999999999996 in binary floating point.
_DIGITS = 12


@dataclass(frozen=True, slots=True)
class GateConfig:
    """Thresholds of the gates; defaults from the team's past spec (DESIGN.md)."""

    max_train_val_gap: float = 0.20
    max_val_test_diff: float = 0.05
    val_test_alpha: float | None = 0.05
    """The val-test gap fails only when also significant at this level; None: threshold only."""
    require_beat_baseline: bool = True
    max_parity_diff: float = 1e-4
    baseline_alpha: float = 0.05
    min_test_rows: int = 100
    max_fold_accuracy_std: float | None = None
    min_test_accuracy: float | None = None
    """Optional absolute floor on test accuracy (off by default: see ``min_test_accuracy_gate``)."""
    blocking_warnings: tuple[str, ...] = ("non_finite", "divergence")


@dataclass(frozen=True, slots=True)
class PairedCounts:
    """Candidate vs baseline on the same out-of-sample rows: the discordant pairs.

    Only rows where exactly one of the two is right carry evidence about which
    is better (McNemar); rows both get right or both get wrong cancel out.
    ``rows`` and ``baseline_right`` give the two accuracies for the reasons.
    """

    candidate_only: int
    baseline_only: int
    rows: int = 0
    baseline_right: int = 0
    baseline: str = "naive"

    @property
    def accuracies(self) -> tuple[float, float] | None:
        """(candidate, baseline) accuracy over ``rows``; None when the rows are unknown."""
        if self.rows <= 0:
            return None
        base = self.baseline_right / self.rows
        return base + (self.candidate_only - self.baseline_only) / self.rows, base

    @property
    def p_value(self) -> float:
        """One-sided exact sign test: P(>= candidate_only wins of n | each side 1/2)."""
        n = self.candidate_only + self.baseline_only
        if n == 0:
            return 1.0
        return float(binom.sf(self.candidate_only - 1, n, 0.5))


@dataclass(frozen=True, slots=True)
class GateVerdict:
    """One gate's judgement, with the numbers that decided it."""

    gate: str
    passed: bool
    value: float | None
    threshold: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _accuracy(metrics: Mapping[str, Metrics], split: str) -> float | None:
    value = metrics.get(split, {}).get("accuracy")
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _missing(gate: str, threshold: float | None, what: str) -> GateVerdict:
    return GateVerdict(gate, False, None, threshold, f"{what} is missing")


def train_val_gap_gate(candidate: Mapping[str, Metrics], max_gap: float) -> GateVerdict:
    """Fails when train accuracy exceeds val accuracy by ``max_gap`` or more (overfitting)."""
    train, val = _accuracy(candidate, "train"), _accuracy(candidate, "val")
    if train is None or val is None:
        return _missing("train_val_gap", max_gap, "train or val accuracy")
    gap = round(train - val, _DIGITS)
    if gap < max_gap:
        return GateVerdict(
            "train_val_gap", True, gap, max_gap, f"train-val gap {gap:.3f} below {max_gap:.3f}"
        )
    return GateVerdict(
        "train_val_gap", False, gap, max_gap, f"train-val gap {gap:.3f} exceeds {max_gap:.3f}"
    )


def val_test_consistency_gate(
    candidate: Mapping[str, Metrics], max_diff: float, alpha: float | None = None
) -> GateVerdict:
    """Fails when val and test accuracy differ by more than ``max_diff`` (an unstable model)
    and, with ``alpha``, by significantly more: the gap is judged as an effect size.

    With ~340 rows each the standard error of the difference is ~0.038, so the
    bare 0.05 threshold rejects about one genuinely good model in five on
    noise alone. The one-sided z-test of "true gap <= ``max_diff``" (independent
    splits, unpooled variance) rejects a stable model far less than ``alpha``
    of the time while a real instability (a 15-point drop) still fails.
    """
    val, test = _accuracy(candidate, "val"), _accuracy(candidate, "test")
    if val is None or test is None:
        return _missing("val_test_consistency", max_diff, "val or test accuracy")
    diff = round(abs(val - test), _DIGITS)
    over = diff > max_diff
    p = None
    if over and alpha is not None:
        n_val, n_test = _rows(candidate, "val"), _rows(candidate, "test")
        if n_val is None or n_test is None:
            return _missing("val_test_consistency", max_diff, "val or test row count")
        p = _exceedance_p(val, n_val, test, n_test, max_diff)
    # Not significant means "could be noise": the model is kept.
    ok = not over or (p is not None and alpha is not None and p >= alpha)
    word = "within" if not over else "exceeds"
    reason = f"|val - test| accuracy {diff:.3f} {word} {max_diff:.3f}"
    if over and p is not None:
        reason += f", {'not ' if ok else ''}significantly (p={p:.4f}, level {alpha:.3f})"
    return GateVerdict("val_test_consistency", ok, diff, max_diff, reason)


def _rows(metrics: Mapping[str, Metrics], split: str) -> int | None:
    n = metrics.get(split, {}).get("n")
    return None if n is None or not n >= 1 else int(n)


def _exceedance_p(a: float, n_a: int, b: float, n_b: int, margin: float) -> float:
    """One-sided p-value of "|true a - true b| <= margin" from accuracies on independent rows."""
    se = math.sqrt(a * (1.0 - a) / n_a + b * (1.0 - b) / n_b)
    excess = abs(a - b) - margin
    if se == 0.0:
        return 0.0 if excess > 0 else 1.0
    return float(norm.sf(excess / se))


def beats_baseline_gate(paired: PairedCounts | None) -> GateVerdict:
    """Fails unless the candidate is right more often than the baseline on the paired rows."""
    accuracies = None if paired is None else paired.accuracies
    if paired is None or accuracies is None:
        return _missing("beats_baseline", None, "paired out-of-sample comparison")
    cand, base = accuracies
    ok = paired.candidate_only > paired.baseline_only
    word = "beats" if ok else "does not beat"
    return GateVerdict(
        "beats_baseline",
        ok,
        round(cand, _DIGITS),
        round(base, _DIGITS),
        f"out-of-sample accuracy {cand:.3f} {word} {paired.baseline} baseline {base:.3f} "
        f"on {paired.rows} rows",
    )


def baseline_significance_gate(paired: PairedCounts | None, alpha: float) -> GateVerdict:
    """Fails unless the candidate beats the baseline significantly (one-sided, level ``alpha``).

    A point estimate alone lets about four in ten models trained on pure noise
    through; the exact test on discordant pairs keeps that near ``alpha``.
    """
    if paired is None:
        return _missing("beats_baseline_significant", alpha, "paired test-split comparison")
    p = round(paired.p_value, _DIGITS)
    ok = p <= alpha
    word = "significant" if ok else "not significant"
    return GateVerdict(
        "beats_baseline_significant",
        ok,
        p,
        alpha,
        f"on {paired.rows} out-of-sample rows, candidate right where the {paired.baseline} "
        f"baseline was wrong {paired.candidate_only} vs "
        f"{paired.baseline_only} the other way: one-sided p={p:.4f}, {word} at {alpha:.3f}",
    )


def min_test_accuracy_gate(candidate: Mapping[str, Metrics], floor: float) -> GateVerdict:
    """Fails unless test accuracy is strictly above an absolute ``floor`` (e.g. 0.55).

    Caveat: an absolute floor ignores the base rate. On a series that rises 60%
    of the time the majority class clears 0.55 with no skill, while a genuine,
    significant 53% edge on a balanced series fails it. The baseline gates are
    the test of skill; this one only encodes a desk's minimum.
    """
    test = _accuracy(candidate, "test")
    if test is None:
        return _missing("min_test_accuracy", floor, "test accuracy")
    ok = test > floor
    word = "above" if ok else "not above"
    return GateVerdict(
        "min_test_accuracy", ok, test, floor, f"test accuracy {test:.3f} {word} floor {floor:.3f}"
    )


def min_test_rows_gate(test_rows: int | None, minimum: int) -> GateVerdict:
    """Fails when the test split is too small for its accuracy to mean anything."""
    if test_rows is None:
        return _missing("min_test_rows", float(minimum), "test split size")
    ok = test_rows >= minimum
    word = "at least" if ok else "below"
    return GateVerdict(
        "min_test_rows",
        ok,
        float(test_rows),
        float(minimum),
        f"{test_rows} test rows, {word} {minimum}",
    )


def fold_stability_gate(fold_accuracy_std: float | None, maximum: float) -> GateVerdict:
    """Fails when test accuracy varies across walk-forward folds by more than ``maximum`` (std)."""
    if fold_accuracy_std is None or not math.isfinite(fold_accuracy_std):
        return _missing("fold_stability", maximum, "walk-forward fold accuracy std")
    std = round(fold_accuracy_std, _DIGITS)
    ok = std <= maximum
    word = "within" if ok else "exceeds"
    return GateVerdict(
        "fold_stability", ok, std, maximum, f"fold accuracy std {std:.3f} {word} {maximum:.3f}"
    )


def training_health_gate(
    warning_kinds: Sequence[str] | None, blocking: Sequence[str]
) -> GateVerdict:
    """Fails when training raised a warning of a blocking kind (non-finite loss, divergence).

    A monitor that stops a diverging run keeps the best weights so far; those
    may even score well, but a run that diverged is not a model to deploy.
    """
    if warning_kinds is None:
        return _missing("training_health", None, "training monitor warnings")
    bad = sorted({k for k in warning_kinds if k in blocking})
    if bad:
        return GateVerdict(
            "training_health", False, float(len(bad)), 0.0, f"training raised {', '.join(bad)}"
        )
    return GateVerdict("training_health", True, 0.0, 0.0, "no blocking training warning")


def onnx_parity_gate(max_abs_diff: float | None, tolerance: float) -> GateVerdict:
    """Fails unless the ONNX export reproduces native probabilities within ``tolerance``."""
    if max_abs_diff is None or not math.isfinite(max_abs_diff):
        return _missing("onnx_parity", tolerance, "ONNX parity measurement")
    ok = max_abs_diff <= tolerance
    word = "within" if ok else "exceeds"
    return GateVerdict(
        "onnx_parity",
        ok,
        max_abs_diff,
        tolerance,
        f"ONNX max abs diff {max_abs_diff:.3g} {word} tolerance {tolerance:.3g}",
    )


def evaluate_gates(
    candidate: Mapping[str, Metrics],
    parity_max_abs_diff: float | None,
    config: GateConfig,
    paired: PairedCounts | None = None,
    *,
    test_rows: int | None = None,
    fold_accuracy_std: float | None = None,
    warning_kinds: Sequence[str] | None = (),
) -> list[GateVerdict]:
    """Every configured gate's verdict, in a fixed order; the candidate passes if all pass.

    The fold-stability gate runs only when ``config.max_fold_accuracy_std`` is set,
    the absolute floor only when ``config.min_test_accuracy`` is.
    """
    verdicts = [
        min_test_rows_gate(test_rows, config.min_test_rows),
        train_val_gap_gate(candidate, config.max_train_val_gap),
        val_test_consistency_gate(candidate, config.max_val_test_diff, config.val_test_alpha),
    ]
    if config.require_beat_baseline:
        verdicts.append(beats_baseline_gate(paired))
        verdicts.append(baseline_significance_gate(paired, config.baseline_alpha))
    if config.min_test_accuracy is not None:
        verdicts.append(min_test_accuracy_gate(candidate, config.min_test_accuracy))
    if config.max_fold_accuracy_std is not None:
        verdicts.append(fold_stability_gate(fold_accuracy_std, config.max_fold_accuracy_std))
    verdicts.append(training_health_gate(warning_kinds, config.blocking_warnings))
    verdicts.append(onnx_parity_gate(parity_max_abs_diff, config.max_parity_diff))
    return verdicts


def bootstrap_alpha(alpha: float, attempt: int) -> float:
    """Significance level of the ``attempt``-th (1-based) try to find a symbol's first champion.

    A symbol without a champion is retrained again and again; testing each
    attempt at ``alpha`` would let a pure-noise symbol through sooner or later.
    Spending alpha / (k (k + 1)) on attempt k sums to at most ``alpha`` over all
    attempts, so the chance that a no-signal symbol EVER gets a champion stays
    <= alpha. Later candidates face the live shadow test instead.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    return alpha / (attempt * (attempt + 1))


def candidate_score(candidate_metrics: Mapping[str, Metrics]) -> float:
    """Rank of a passing candidate: test accuracy - 0.5 x (train acc - val acc) (DESIGN.md).

    Missing accuracies score ``-inf`` so such a candidate is never chosen.
    """
    train = _accuracy(candidate_metrics, "train")
    val = _accuracy(candidate_metrics, "val")
    test = _accuracy(candidate_metrics, "test")
    if train is None or val is None or test is None:
        return -math.inf
    return test - 0.5 * (train - val)
