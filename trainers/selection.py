"""The comparison record of a run: how the scored candidates differ, and why one was served.

The served candidate is the passing one with the best ``candidate_score``,
which penalises overfitting, so it can be less accurate on test than another
passing candidate. This records, from the candidates' own out-of-sample
predictions (``trainers.candidate.Predictions``), whether such differences are
more than noise: paired tests on the test split's rows, Friedman/Nemenyi
across the walk-forward test blocks, and the selection rule with the test
between the chosen and the most accurate candidate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Final

import numpy as np
import numpy.typing as npt

from trainers.candidate import CandidateRun
from trainers.comparison import PairedTest, diebold_mariano, friedman_nemenyi, mcnemar
from trainers.metadata import ComparisonRecord, FriedmanRecord, PairedTestRecord, SelectionRecord
from trainers.metrics import PROBA_CLIP

ALPHA: Final = 0.05
"""Level of the comparison's verdicts (``significant``, Nemenyi's pairs); p-values are kept."""
SELECTION_RULE: Final = (
    "max candidate_score (test accuracy - 0.5 x train-val gap) among the candidates "
    "passing every gate; the first of equals"
)
FloatArray = npt.NDArray[np.float64]


def candidate_labels(trainers: Sequence[str]) -> list[str]:
    """One name per candidate, in order: its trainer, a repeated one suffixed -2, -3..."""
    labels: list[str] = []
    for trainer in trainers:
        label, k = trainer, 1
        while label in labels:
            k += 1
            label = f"{trainer}-{k}"
        labels.append(label)
    return labels


def compare_candidates(
    runs: Sequence[CandidateRun],
    labels: FloatArray,
    test_start: int,
    chosen: CandidateRun | None,
    *,
    alpha: float = ALPHA,
) -> ComparisonRecord:
    """Paired tests, Friedman/Nemenyi and the selection of ``runs`` against 0/1 ``labels``.

    A candidate takes part when it predicted the test split (block ``test_start``):
    it got as far as scoring, whether or not a gate failed it. Friedman uses the
    blocks every such candidate predicted, among the candidates that predicted
    them all; it is skipped with fewer than 2 of either. Log loss is per row,
    clipped like ``trainers.metrics``; the horizon is one bar (the label's), so
    Diebold-Mariano needs no lags.
    """
    names = candidate_labels([r.record.trainer for r in runs])
    scored = {
        name: run.predictions.blocks
        for name, run in zip(names, runs, strict=True)
        if run.predictions is not None and test_start in run.predictions.blocks
    }
    correct = {n: _correct(b[test_start], labels, test_start) for n, b in scored.items()}
    loss = {n: _log_loss(b[test_start], labels, test_start) for n, b in scored.items()}
    order = list(scored)
    paired = []
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            paired.extend(_pair(a, b, correct, loss))
    friedman, skipped = _friedman(scored, labels, alpha)
    chosen_name = next((n for n, r in zip(names, runs, strict=True) if r is chosen), None)
    return ComparisonRecord(
        alpha=alpha,
        test_rows=len(next(iter(correct.values()), ())),
        candidates=tuple(order),
        paired=tuple(paired),
        friedman=friedman,
        friedman_skipped=skipped,
        selection=_selection(names, runs, chosen_name, correct=correct, loss=loss, alpha=alpha),
    )


def _selection(
    names: list[str],
    runs: Sequence[CandidateRun],
    chosen: str | None,
    *,
    correct: dict[str, npt.NDArray[np.bool_]],
    loss: dict[str, FloatArray],
    alpha: float,
) -> SelectionRecord:
    """The rule, the chosen and the most accurate passing candidate (the chosen one on ties)."""
    passing = [n for n, r in zip(names, runs, strict=True) if r.record.passed and n in correct]
    if chosen is None or chosen not in correct or not passing:
        return SelectionRecord(rule=SELECTION_RULE, chosen=chosen)
    best = max(float(correct[n].mean()) for n in passing)
    most = next(n for n in [chosen, *passing] if correct[n].mean() >= best)
    if most == chosen:
        return SelectionRecord(rule=SELECTION_RULE, chosen=chosen, most_accurate=most)
    tests = _pair(chosen, most, correct, loss)
    return SelectionRecord(
        rule=SELECTION_RULE,
        chosen=chosen,
        most_accurate=most,
        tests=tuple(tests),
        significant=tests[0].p_value < alpha,
    )


def _pair(
    a: str, b: str, correct: dict[str, npt.NDArray[np.bool_]], loss: dict[str, FloatArray]
) -> list[PairedTestRecord]:
    """McNemar on direction, then Diebold-Mariano on log loss, of ``a`` against ``b``."""
    tests: list[PairedTest] = [mcnemar(correct[a], correct[b])]
    if len(loss[a]) >= 2:
        tests.append(diebold_mariano(loss[a], loss[b]))
    return [PairedTestRecord(a=a, b=b, **asdict(t)) for t in tests]


def _friedman(
    blocks_of: Mapping[str, Mapping[int, FloatArray]], labels: FloatArray, alpha: float
) -> tuple[FriedmanRecord | None, str | None]:
    """Friedman/Nemenyi of per-block accuracy, or None and why it was skipped."""
    starts = sorted({s for b in blocks_of.values() for s in b})
    full = [n for n, b in blocks_of.items() if all(s in b for s in starts)]
    if len(starts) < 2:
        return None, f"{len(starts)} walk-forward test block(s); Friedman needs 2"
    if len(full) < 2:
        return None, f"{len(full)} candidate(s) predicted all {len(starts)} blocks; needs 2"
    accuracy = np.array(
        [[float(_correct(blocks_of[n][s], labels, s).mean()) for n in full] for s in starts]
    )
    result = friedman_nemenyi(accuracy, full, alpha)
    return (
        FriedmanRecord(
            candidates=tuple(full),
            block_starts=tuple(starts),
            accuracy=tuple(tuple(float(v) for v in row) for row in accuracy),
            mean_ranks=result.mean_ranks,
            statistic=result.statistic,
            f_statistic=result.f_statistic,
            p_value=result.p_value,
            method=result.method,
            alpha=alpha,
            critical_difference=result.critical_difference,
            differ=result.differ,
        ),
        None,
    )


def _correct(proba: FloatArray, labels: FloatArray, start: int) -> npt.NDArray[np.bool_]:
    """Rows predicted right at the 0.5 threshold (as ``classification_metrics`` judges)."""
    up = labels[start : start + len(proba)] == 1.0
    return np.asarray((proba >= 0.5) == up, dtype=bool)


def _log_loss(proba: FloatArray, labels: FloatArray, start: int) -> FloatArray:
    y = labels[start : start + len(proba)].astype(np.float64)
    p = np.clip(proba, PROBA_CLIP, 1.0 - PROBA_CLIP)
    return np.asarray(-(y * np.log(p) + (1.0 - y) * np.log1p(-p)), dtype=np.float64)
