"""The run's comparison record: paired tests on the test rows, Friedman over blocks, selection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.metadata import sample_metadata
from trainers.candidate import CandidateRun, Predictions
from trainers.comparison import diebold_mariano, mcnemar
from trainers.config import TrainConfig
from trainers.errors import InvalidInputError, MetadataError
from trainers.metadata import CandidateRecord, ComparisonRecord, ModelMetadata
from trainers.pipeline import train_symbol
from trainers.selection import (
    SELECTION_RULE,
    compare_candidates,
    selection_rule,
)
from trainers.synthetic import MarketSpec, generate_bars

RNG = np.random.default_rng(11)
LABELS = (RNG.random(1000) < 0.5).astype(np.float64)
BLOCKS = {200: 200, 400: 200, 600: 400}  # first row -> rows; 600 is the test split
TEST = 600


def proba(accuracy: float, seed: int, start: int, rows: int) -> np.ndarray:
    """Up-probabilities right on about ``accuracy`` of the rows from ``start``."""
    rng = np.random.default_rng(seed)
    up = LABELS[start : start + rows] == 1.0
    right = rng.random(rows) < accuracy
    return np.where(up == right, 0.7, 0.3)


def run(
    trainer: str, accuracy: float, seed: int, *, passed: bool = True, score: float = 0.5,
    blocks: tuple[int, ...] = tuple(BLOCKS),
) -> CandidateRun:  # fmt: skip
    record = CandidateRecord(trainer=trainer, params={}, passed=passed, score=score)
    predicted = {s: proba(accuracy, seed + s, s, BLOCKS[s]) for s in blocks}
    return CandidateRun(record, None, None, Predictions(np.zeros(10), predicted))


def correct(run: CandidateRun, start: int = TEST) -> np.ndarray:
    assert run.predictions is not None
    p = run.predictions.blocks[start]
    return np.asarray((p >= 0.5) == (LABELS[start : start + len(p)] == 1.0), dtype=bool)


def test_every_pair_is_tested_and_the_chosen_is_tested_against_the_most_accurate():
    """Chosen (best score) and most accurate differ: McNemar and DM between them, the
    verdict from McNemar's p; pairs cover every scored candidate, Friedman only those
    with every block."""
    chosen = run("xgboost", 0.55, 1, score=0.6)
    accurate = run("lstm", 0.65, 2, score=0.4)
    failed = run("tcn", 0.6, 3, passed=False, blocks=(TEST,))
    record = compare_candidates([chosen, accurate, failed], LABELS, TEST, chosen)

    assert record.test_rows == 400 and record.candidates == ("xgboost", "lstm", "tcn")
    pairs = [(p.a, p.b, p.test) for p in record.paired]
    assert pairs == [
        (a, b, t)
        for a, b in (("xgboost", "lstm"), ("xgboost", "tcn"), ("lstm", "tcn"))
        for t in ("mcnemar", "diebold_mariano")
    ]
    first = record.paired[0]
    expected = mcnemar(correct(chosen), correct(accurate))
    assert (first.a_wins, first.b_wins, first.p_value) == (
        expected.a_wins, expected.b_wins, expected.p_value,
    )  # fmt: skip

    selection = record.selection
    assert (selection.rule, selection.chosen, selection.most_accurate) == (
        SELECTION_RULE, "xgboost", "lstm",
    )  # fmt: skip
    assert [t.test for t in selection.tests] == ["mcnemar", "diebold_mariano"]
    assert selection.tests[0].effect < 0  # the chosen one is less accurate
    assert selection.significant == (selection.tests[0].p_value < record.alpha)

    friedman = record.friedman
    assert friedman is not None and record.friedman_skipped is None
    assert friedman.candidates == ("xgboost", "lstm")
    assert friedman.block_starts == (200, 400, 600)
    assert friedman.accuracy[2] == pytest.approx((correct(chosen).mean(), correct(accurate).mean()))
    assert friedman.method == "exact"


def test_when_the_chosen_is_the_most_accurate_there_is_nothing_to_test():
    """No paired test in the selection, ``significant`` None; a tie goes to the chosen."""
    a, b = run("xgboost", 0.6, 1, score=0.6), run("lstm", 0.6, 1, score=0.4)  # same rows right
    selection = compare_candidates([a, b], LABELS, TEST, a).selection
    assert (selection.chosen, selection.most_accurate) == ("xgboost", "xgboost")
    assert selection.tests == () and selection.significant is None


def test_without_a_passing_candidate_or_blocks_the_record_says_so():
    """No chosen: the rule alone; one block each: Friedman skipped with the reason."""
    a = run("xgboost", 0.5, 1, passed=False, blocks=(TEST,))
    b = run("lstm", 0.5, 2, passed=False, blocks=(TEST,))
    record = compare_candidates([a, b], LABELS, TEST, None)
    assert record.selection.chosen is None and record.selection.most_accurate is None
    assert record.friedman is None
    assert record.friedman_skipped == "1 walk-forward test block(s); Friedman needs 2"
    assert len(record.paired) == 2


def test_an_unscored_candidate_is_left_out_and_repeated_trainers_get_distinct_names():
    """A candidate that stopped before scoring has no predictions and is not compared."""
    broken = CandidateRun(CandidateRecord(trainer="xgboost", params={}), None, None, None)
    a, b = run("xgboost", 0.5, 1), run("xgboost", 0.6, 2)
    record = compare_candidates([broken, a, b], LABELS, TEST, b)
    assert record.candidates == ("xgboost-2", "xgboost-3")
    assert record.selection.chosen == "xgboost-3"


def test_metadata_keeps_the_comparison_and_older_files_still_read():
    """The record round-trips through metadata.json; a file without it reads as None; an
    unknown key inside it is refused."""
    a, b = run("xgboost", 0.55, 1, score=0.6), run("lstm", 0.65, 2, score=0.4)
    comparison = compare_candidates([a, b], LABELS, TEST, a)
    meta = sample_metadata().model_copy(update={"comparison": comparison})
    assert ModelMetadata.from_json(meta.to_json()).comparison == comparison
    old = json.loads(meta.to_json())
    del old["comparison"]
    assert ModelMetadata.from_dict(old).comparison is None
    bad = json.loads(meta.to_json())
    bad["comparison"]["selection"]["winner"] = "x"
    with pytest.raises(MetadataError, match=r"comparison\.selection\.winner"):
        ModelMetadata.from_dict(bad)
    assert ComparisonRecord.model_validate(json.loads(meta.to_json())["comparison"]) == comparison


def test_train_symbol_writes_the_comparison(tmp_path):
    """A real run of two candidates with walk-forward folds records pairs, Friedman over its
    three blocks and the selection naming the served trainer."""
    config = TrainConfig(
        trainers=("xgboost", "persistence"),
        trainer_params={"xgboost": {"preset": "tiny"}},
        walk_forward_folds=3,
    )
    bars = generate_bars(MarketSpec("BTCUSDT", 1, signal_strength=1.0), 3000)
    result = train_symbol("BTCUSDT", bars, config, tmp_path)
    comparison = result.metadata.comparison
    assert comparison is not None
    assert comparison.candidates == ("xgboost", "persistence")
    assert comparison.test_rows == result.metadata.split.test[1] - result.metadata.split.test[0]
    assert {p.test for p in comparison.paired} == {"mcnemar", "diebold_mariano"}
    assert comparison.friedman is not None and len(comparison.friedman.block_starts) == 3
    assert comparison.selection.chosen == result.chosen


# Return targets: forward log returns over H bars, built as overlapping sums of one-bar
# moves so neighbouring labels share H - 1 bars, as real labels do.
H = 3
_MOVES = np.random.default_rng(5).normal(0.0, 0.01, 1000 + H)
RETURNS = np.convolve(_MOVES, np.ones(H), mode="valid")[:1000]


def return_run(
    trainer: str, noise: float, seed: int, *, passed: bool = True, score: float = 0.5,
    blocks: tuple[int, ...] = tuple(BLOCKS),
) -> CandidateRun:  # fmt: skip
    """Predicted returns: the realised return plus noise of std ``noise`` (lower is better)."""
    rng = np.random.default_rng(seed)
    predicted = {s: RETURNS[s : s + BLOCKS[s]] + rng.normal(0.0, noise, BLOCKS[s]) for s in blocks}
    record = CandidateRecord(trainer=trainer, params={}, passed=passed, score=score)
    return CandidateRun(record, None, None, Predictions(np.zeros(10), predicted))


def test_a_return_target_is_compared_by_diebold_mariano_on_squared_error():
    """Returns: no McNemar, DM on per-row squared error with HAC lag H - 1, the most
    accurate is the lowest test RMSE, Friedman ranks per-block R^2; the rule says so."""
    chosen = return_run("xgboost", 0.02, 1, score=0.6)
    accurate = return_run("lstm", 0.005, 2, score=0.4)
    record = compare_candidates(
        [chosen, accurate], RETURNS, TEST, chosen, target="return", horizon=H
    )

    assert [p.test for p in record.paired] == ["diebold_mariano"]
    assert chosen.predictions is not None and accurate.predictions is not None
    y = RETURNS[TEST : TEST + 400]
    loss_a = (chosen.predictions.blocks[TEST] - y) ** 2
    loss_b = (accurate.predictions.blocks[TEST] - y) ** 2
    expected = diebold_mariano(loss_a, loss_b, H)
    assert record.paired[0].statistic == pytest.approx(expected.statistic)
    assert record.paired[0].p_value == pytest.approx(expected.p_value)
    assert expected.statistic != pytest.approx(diebold_mariano(loss_a, loss_b, 1).statistic)
    assert record.paired[0].effect < 0 and record.paired[0].p_value < 1e-6  # a is worse

    selection = record.selection
    assert (selection.chosen, selection.most_accurate) == ("xgboost", "lstm")
    assert [t.test for t in selection.tests] == ["diebold_mariano"]
    assert selection.significant is True
    assert selection.rule == selection_rule("return", H)
    assert "lowest test RMSE" in selection.rule and "squared error" in selection.rule
    assert f"HAC lag {H - 1}" in selection.rule

    friedman = record.friedman
    assert friedman is not None
    r2 = 1.0 - np.mean(loss_b) / np.var(y)
    assert friedman.accuracy[2][1] == pytest.approx(r2)
    assert friedman.mean_ranks == (2.0, 1.0)


def test_return_most_accurate_ignores_a_better_failed_candidate_and_ties_go_to_the_chosen():
    """Only passing candidates compete for lowest RMSE; the chosen wins a tie."""
    chosen = return_run("xgboost", 0.01, 1, score=0.6)
    twin = return_run("lstm", 0.01, 1, score=0.4)  # the same predictions
    failed = return_run("tcn", 0.001, 3, passed=False)
    selection = compare_candidates(
        [chosen, twin, failed], RETURNS, TEST, chosen, target="return", horizon=H
    ).selection
    assert (selection.chosen, selection.most_accurate) == ("xgboost", "xgboost")
    assert selection.tests == () and selection.significant is None


def test_a_return_comparison_round_trips_through_metadata():
    """The return record is the same typed record: it survives metadata.json."""
    a, b = return_run("xgboost", 0.02, 1), return_run("lstm", 0.01, 2)
    comparison = compare_candidates([a, b], RETURNS, TEST, a, target="return", horizon=H)
    meta = sample_metadata().model_copy(update={"comparison": comparison})
    assert ModelMetadata.from_json(meta.to_json()).comparison == comparison


def test_a_horizon_below_one_is_refused():
    with pytest.raises(InvalidInputError, match="horizon must be >= 1, got 0"):
        compare_candidates([], RETURNS, TEST, None, target="return", horizon=0)
