"""The comparison record of a run: how the scored candidates differ, and why one was served.

The served candidate is the passing one with the best ``candidate_score``,
which penalises overfitting, so it can be less accurate on test than another
passing candidate. This records, from the candidates' own out-of-sample
predictions (``trainers.candidate.Predictions``), whether such differences are
more than noise: paired tests on the test split's rows, Friedman/Nemenyi
across the walk-forward test blocks, and the selection rule with the test
between the chosen and the most accurate candidate.

What "right" and "loss" mean follows the run's target (``trainers.targets``):

- ``direction``: McNemar on the rows exactly one got right (P(up) >= 0.5), then
  Diebold-Mariano on per-row log loss; Friedman ranks per-block accuracy; the most
  accurate candidate has the highest test accuracy.
- ``return``: there is no right or wrong to count, so only Diebold-Mariano, on
  per-row squared error, with a HAC variance over ``horizon - 1`` lags (the labels of
  neighbouring rows overlap by that many bars); Friedman ranks per-block R^2,
  ``1 - MSE / variance of the block's returns`` (within a block the same ranks as
  -MSE, and comparable across blocks of different volatility when read); the most
  accurate candidate has the lowest test RMSE. The selection ``rule`` names the
  test and the loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Final

import numpy as np
import numpy.typing as npt

from trainers.candidate import CandidateRun
from trainers.comparison import PairedTest, diebold_mariano, friedman_nemenyi, mcnemar
from trainers.errors import InvalidInputError
from trainers.evidence import evidence_names
from trainers.metadata import ComparisonRecord, FriedmanRecord, PairedTestRecord, SelectionRecord
from trainers.metrics import PROBA_CLIP
from trainers.targets import DIRECTION, RETURN, Target

ALPHA: Final = 0.05
"""Level of the comparison's verdicts (``significant``, Nemenyi's pairs); p-values are kept."""
SELECTION_RULE: Final = (
    "max candidate_score (test accuracy - 0.5 x train-val gap) among the candidates "
    "passing every gate; the first of equals"
)
RETURN_SELECTION_RULE: Final = (
    "max return_candidate_score (test skill - 0.5 x train-val skill gap, skill = 1 - MSE / "
    "yardstick MSE) among the candidates passing every gate; the first of equals. "
    "Most accurate: lowest test RMSE. Paired tests: Diebold-Mariano on squared error, "
    "HAC lag {lag} (horizon {horizon} bars); Friedman on per-block R^2"
)
"""The rule of a return-target run; formatted with its horizon and HAC lag."""
FloatArray = npt.NDArray[np.float64]


def selection_rule(target: Target = DIRECTION, horizon: int = 1) -> str:
    """The selection rule recorded for ``target``: which score chose, which tests judged."""
    if target == RETURN:
        return RETURN_SELECTION_RULE.format(lag=horizon - 1, horizon=horizon)
    return SELECTION_RULE


def compare_candidates(
    runs: Sequence[CandidateRun],
    labels: FloatArray,
    test_start: int,
    chosen: CandidateRun | None,
    *,
    alpha: float = ALPHA,
    target: Target = DIRECTION,
    horizon: int = 1,
) -> ComparisonRecord:
    """Paired tests, Friedman/Nemenyi and the selection of ``runs`` against ``labels``.

    ``labels`` follow ``target`` (0/1, or forward log returns over ``horizon`` bars);
    the candidates' predictions are P(up) or predicted returns accordingly. A
    candidate takes part when it predicted the test split (block ``test_start``): it
    got as far as scoring, whether or not a gate failed it. Friedman uses the blocks
    every such candidate predicted, among the candidates that predicted them all; it
    is skipped with fewer than 2 of either. Log loss is per row, clipped like
    ``trainers.metrics``. Diebold-Mariano's HAC variance spans ``horizon - 1`` lags.
    """
    if horizon < 1:
        raise InvalidInputError(f"horizon must be >= 1, got {horizon}")
    names = evidence_names([r.record.trainer for r in runs])  # as in predictions.csv
    scored = {
        name: run.predictions.blocks
        for name, run in zip(names, runs, strict=True)
        if run.predictions is not None and test_start in run.predictions.blocks
    }
    judge = _Judge(target, horizon, labels)
    test = {n: b[test_start] for n, b in scored.items()}
    order = list(scored)
    paired = []
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            paired.extend(judge.pair(a, b, test, test_start))
    friedman, skipped = _friedman(scored, judge, alpha)
    chosen_name = next((n for n, r in zip(names, runs, strict=True) if r is chosen), None)
    return ComparisonRecord(
        alpha=alpha,
        test_rows=len(next(iter(test.values()), ())),
        candidates=tuple(order),
        paired=tuple(paired),
        friedman=friedman,
        friedman_skipped=skipped,
        selection=_selection(
            names, runs, chosen_name, judge, test=test, start=test_start, alpha=alpha
        ),
    )


class _Judge:
    """What right, loss and a block's score mean for one target, on one run's labels."""

    def __init__(self, target: Target, horizon: int, labels: FloatArray) -> None:
        self.target, self.horizon = target, horizon
        self.labels = np.asarray(labels, dtype=np.float64)

    def accuracy(self, pred: FloatArray, start: int) -> float:
        """Higher is better: accuracy (direction), minus RMSE (return)."""
        if self.target == RETURN:
            return -math.sqrt(float(self.loss(pred, start).mean()))
        return float(_correct(pred, self.labels, start).mean())

    def loss(self, pred: FloatArray, start: int) -> FloatArray:
        """Per-row loss: log loss (direction), squared error (return)."""
        if self.target == RETURN:
            y = self.labels[start : start + len(pred)]
            return np.asarray((np.asarray(pred, dtype=np.float64) - y) ** 2, dtype=np.float64)
        return _log_loss(pred, self.labels, start)

    def block_score(self, pred: FloatArray, start: int) -> float:
        """Friedman's per-block score, higher is better: accuracy, or R^2 of returns."""
        if self.target != RETURN:
            return self.accuracy(pred, start)
        y = self.labels[start : start + len(pred)]
        mse = float(self.loss(pred, start).mean())
        variance = float(np.var(y))
        # A block whose returns do not vary has no R^2; -MSE ranks the same way there.
        return 1.0 - mse / variance if variance > 0.0 else -mse

    def pair(
        self, a: str, b: str, test: Mapping[str, FloatArray], start: int
    ) -> list[PairedTestRecord]:
        """``a`` against ``b``: McNemar then DM on log loss (direction), DM on squared
        error with HAC lag ``horizon - 1`` (return)."""
        tests: list[PairedTest] = []
        if self.target != RETURN:
            tests.append(
                mcnemar(
                    _correct(test[a], self.labels, start), _correct(test[b], self.labels, start)
                )
            )
        loss_a, loss_b = self.loss(test[a], start), self.loss(test[b], start)
        if len(loss_a) >= 2:
            tests.append(diebold_mariano(loss_a, loss_b, self.horizon))
        return [PairedTestRecord(a=a, b=b, **asdict(t)) for t in tests]


def _selection(
    names: list[str],
    runs: Sequence[CandidateRun],
    chosen: str | None,
    judge: _Judge,
    *,
    test: Mapping[str, FloatArray],
    start: int,
    alpha: float,
) -> SelectionRecord:
    """The rule, the chosen and the most accurate passing candidate (the chosen one on ties).

    ``significant`` reads the first test: McNemar (direction), Diebold-Mariano (return).
    """
    rule = selection_rule(judge.target, judge.horizon)
    passing = [n for n, r in zip(names, runs, strict=True) if r.record.passed and n in test]
    if chosen is None or chosen not in test or not passing:
        return SelectionRecord(rule=rule, chosen=chosen)
    accuracy = {n: judge.accuracy(test[n], start) for n in {chosen, *passing}}
    best = max(accuracy[n] for n in passing)
    most = next(n for n in [chosen, *passing] if accuracy[n] >= best)
    if most == chosen:
        return SelectionRecord(rule=rule, chosen=chosen, most_accurate=most)
    tests = judge.pair(chosen, most, test, start)
    return SelectionRecord(
        rule=rule,
        chosen=chosen,
        most_accurate=most,
        tests=tuple(tests),
        significant=tests[0].p_value < alpha if tests else None,
    )


def _friedman(
    blocks_of: Mapping[str, Mapping[int, FloatArray]], judge: _Judge, alpha: float
) -> tuple[FriedmanRecord | None, str | None]:
    """Friedman/Nemenyi of the per-block score (``_Judge.block_score``), or None and why
    it was skipped. ``FriedmanRecord.accuracy`` holds that score."""
    starts = sorted({s for b in blocks_of.values() for s in b})
    full = [n for n, b in blocks_of.items() if all(s in b for s in starts)]
    if len(starts) < 2:
        return None, f"{len(starts)} walk-forward test block(s); Friedman needs 2"
    if len(full) < 2:
        return None, f"{len(full)} candidate(s) predicted all {len(starts)} blocks; needs 2"
    score = np.array([[judge.block_score(blocks_of[n][s], s) for n in full] for s in starts])
    result = friedman_nemenyi(score, full, alpha)
    return (
        FriedmanRecord(
            candidates=tuple(full),
            block_starts=tuple(starts),
            accuracy=tuple(tuple(float(v) for v in row) for row in score),
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
