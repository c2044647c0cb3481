"""Quality gates of a ``return`` target (``trainers.targets``): losses, not right and wrong.

A return candidate is judged on ``PairedLosses``: squared errors of candidate and
yardstick on the same out-of-sample rows (the test split plus the walk-forward
folds' test blocks), with the Diebold-Mariano test computed in
``trainers.evaluation`` (monitors imports nothing of trainers). The accuracy gates
(train-val gap, val-test consistency, fold stability, accuracy floor) have no return
counterpart: see ``evaluate_return_gates`` for why, and ``return_candidate_score``
for the ranking. The gates both targets share live in ``monitors.gates``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from monitors.gates import (
    _DIGITS,
    GateConfig,
    GateVerdict,
    Metrics,
    _missing,
    min_test_rows_gate,
    onnx_parity_gate,
    training_health_gate,
)


@dataclass(frozen=True, slots=True)
class PairedLosses:
    """Candidate vs baseline return forecasts on the same out-of-sample rows.

    ``candidate_mse`` / ``baseline_mse``: mean squared errors over ``rows`` pooled
    from ``blocks`` blocks (None without rows). ``statistic``: Diebold-Mariano's
    (HLN-corrected, HAC lag ``horizon - 1``), > 0 when the candidate's loss is
    lower; ``p_value``: one-sided, that it is lower.
    """

    rows: int
    blocks: int
    candidate_mse: float | None
    baseline_mse: float | None
    statistic: float
    p_value: float
    baseline: str = "zero"
    horizon: int = 1


def beats_baseline_loss_gate(losses: PairedLosses | None) -> GateVerdict:
    """Fails unless the candidate's out-of-sample MSE is below the baseline's (a return
    target's ``beats_baseline``)."""
    if losses is None or losses.candidate_mse is None or losses.baseline_mse is None:
        return _missing("beats_baseline", None, "paired out-of-sample comparison")
    cand, base = losses.candidate_mse, losses.baseline_mse
    ok = cand < base
    word = "beats" if ok else "does not beat"
    return GateVerdict(
        "beats_baseline",
        ok,
        cand,
        base,
        f"out-of-sample MSE {cand:.4g} {word} {losses.baseline} baseline {base:.4g} "
        f"on {losses.rows} rows",
    )


def loss_significance_gate(losses: PairedLosses | None, alpha: float) -> GateVerdict:
    """Fails unless the candidate's squared-error loss is significantly below the baseline's
    (one-sided Diebold-Mariano, HAC lag ``horizon - 1``, level ``alpha``)."""
    if losses is None or losses.rows < 2:
        return _missing("beats_baseline_significant", alpha, "paired out-of-sample comparison")
    p = round(losses.p_value, _DIGITS)
    ok = p <= alpha
    word = "significant" if ok else "not significant"
    return GateVerdict(
        "beats_baseline_significant",
        ok,
        p,
        alpha,
        f"on {losses.rows} out-of-sample rows ({losses.blocks} blocks), squared-error loss vs "
        f"the {losses.baseline} baseline: Diebold-Mariano {losses.statistic:.3f} "
        f"(HAC lag {losses.horizon - 1}), one-sided p={p:.4f}, {word} at {alpha:.3f}",
    )


def _not_applied(gate: str, why: str) -> GateVerdict:
    return GateVerdict(gate, True, None, None, f"not applied to return targets: {why}")


def evaluate_return_gates(
    parity_max_abs_diff: float | None,
    config: GateConfig,
    losses: PairedLosses | None,
    *,
    test_rows: int | None = None,
    warning_kinds: Sequence[str] | None = (),
) -> list[GateVerdict]:
    """``evaluate_gates`` for a ``return`` target, in the same order and with the same names.

    The baseline gates judge ``losses`` (``require_beat_baseline`` switches them as for
    direction). The accuracy gates are recorded as passed with the reason they do not
    apply: train-val gap and val-test consistency are thresholds in accuracy points with
    no return scale (an R^2 gap of 0.2 means nothing fixed: a flexible model fits
    train returns far more tightly than any real signal allows, planted or not); fold
    stability and the accuracy floor are accuracy thresholds too. The overfit check
    is in ``return_candidate_score`` (the train-val skill gap penalty) and the
    significance test on pooled out-of-sample blocks is the test of skill.
    """
    verdicts = [
        min_test_rows_gate(test_rows, config.min_test_rows),
        _not_applied("train_val_gap", "an accuracy gap; the score penalises the skill gap"),
        _not_applied(
            "val_test_consistency", "an accuracy gap; the paired test pools every test block"
        ),
    ]
    if config.require_beat_baseline:
        verdicts.append(beats_baseline_loss_gate(losses))
        verdicts.append(loss_significance_gate(losses, config.baseline_alpha))
    if config.min_test_accuracy is not None:
        verdicts.append(_not_applied("min_test_accuracy", "an accuracy floor"))
    if config.max_fold_accuracy_std is not None:
        verdicts.append(_not_applied("fold_stability", "a fold accuracy std"))
    verdicts.append(training_health_gate(warning_kinds, config.blocking_warnings))
    verdicts.append(onnx_parity_gate(parity_max_abs_diff, config.max_parity_diff))
    return verdicts


def _mse(metrics: Mapping[str, Metrics], split: str) -> float | None:
    rmse = metrics.get(split, {}).get("rmse")
    if rmse is None or not math.isfinite(rmse):
        return None
    return float(rmse) ** 2


def return_candidate_score(
    candidate_metrics: Mapping[str, Metrics], yardstick_metrics: Mapping[str, Metrics]
) -> float:
    """Rank of a passing return candidate: skill on test - 0.5 x (skill on train - on val).

    ``skill = 1 - MSE / MSE of the yardstick`` on the same split (out-of-sample R^2
    against the yardstick: 0 is no better, 0.05 is 5% less squared error), so the
    formula mirrors ``candidate_score``'s accuracy and overfit penalty. Missing
    metrics or a zero yardstick MSE score ``-inf``.
    """
    skill: dict[str, float] = {}
    for split in ("train", "val", "test"):
        cand, base = _mse(candidate_metrics, split), _mse(yardstick_metrics, split)
        if cand is None or base is None or base <= 0.0:
            return -math.inf
        skill[split] = 1.0 - cand / base
    return skill["test"] - 0.5 * (skill["train"] - skill["val"])
