"""The yardstick baselines and the pooled out-of-sample rows the baseline test judges."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from monitors.gates import GateConfig
from trainers.baselines import choose_yardstick, earlier_folds, fit_yardsticks
from trainers.config import TrainConfig
from trainers.evaluation import paired_counts
from trainers.features import training_matrix
from trainers.onnx_io import OnnxScorer
from trainers.pipeline import train_symbol
from trainers.synthetic import planted_bars

XGB = TrainConfig(
    trainers=("xgboost",),
    trainer_params={"xgboost": {"preset": "tiny"}},
    gates=GateConfig(baseline_alpha=0.025),
)


def test_paired_counts_pool_blocks_both_sides_predicted():
    """Discordant rows add up over blocks; a block only one side predicted is left out."""
    labels = np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=np.float64)
    candidate = {
        0: np.array([0.9, 0.1, 0.2, 0.8]),
        4: np.array([0.1, 0.9, 0.9, 0.1]),
        9: np.ones(2),
    }
    baseline = {0: np.full(4, 0.6), 4: np.full(4, 0.6)}
    counts = paired_counts(labels, candidate, baseline, "naive")
    # Block 0: candidate right on rows 0,1,3, baseline (always up) on 0,2,3.
    # Block 4: candidate right on 4,6,7, baseline on 6 only.
    assert (counts.candidate_only, counts.baseline_only) == (1 + 2, 1 + 0)
    assert (counts.rows, counts.baseline_right, counts.baseline) == (8, 3 + 1, "naive")
    assert counts.accuracies == pytest.approx((6 / 8, 4 / 8))


def test_the_pooled_rows_are_every_walk_forward_test_block(tmp_path):
    """With 3 folds the candidate is judged on 3 non-overlapping test blocks, the last
    being the run's own test split; each earlier block lies before the rows its fold
    model was fitted on would reach (train ends an embargo before val, val before test)."""
    bars = planted_bars(2500, seed=11, accuracy=0.62, lag=2)
    data = training_matrix(bars).dataset(val_fraction=0.15, test_fraction=0.15)
    folds = earlier_folds(data, XGB)
    assert len(folds) == 2
    blocks = sorted(
        [(f.test.start, f.test.stop) for f in folds]
        + [(data.split.test.start, data.split.test.stop)]
    )
    assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))
    for fold in folds:
        assert fold.train.stop + fold.embargo <= fold.val.start
        assert fold.val.stop + fold.embargo <= fold.test.start
    result = train_symbol("SYM", bars, XGB, tmp_path)
    xgb = result.metadata.candidates[0]
    assert xgb.baseline_comparison is not None
    n_test = data.split.test.stop - data.split.test.start
    assert (xgb.baseline_comparison.rows, xgb.baseline_comparison.blocks) == (3 * n_test, 3)
    assert result.passed, result.reason


def test_persistence_is_the_yardstick_and_the_champion_where_it_is_the_best_rule(tmp_path):
    """Lag-1 momentum: persistence is more accurate on validation than the majority class,
    so models must beat it; persistence itself, judged against the majority class on the
    test split alone, passes and is served as an ONNX graph like any model."""
    bars = planted_bars(2500, seed=5, accuracy=0.62, lag=1)
    data = training_matrix(bars).dataset(val_fraction=0.15, test_fraction=0.15)
    yardstick = choose_yardstick(fit_yardsticks(data, training_matrix(bars).fwd_returns, XGB))
    assert yardstick.name == "persistence"
    result = train_symbol("SYM", bars, XGB, tmp_path)
    meta = result.metadata
    assert meta.baseline.trainer == "persistence"
    assert [b.trainer for b in meta.baselines] == ["naive", "persistence"]
    by_name = {c.trainer: c for c in meta.candidates}
    xgb, persistence = by_name["xgboost"], by_name["persistence"]
    assert xgb.baseline_comparison is not None and persistence.baseline_comparison is not None
    assert xgb.baseline_comparison.baseline == "persistence"
    assert persistence.baseline_comparison.baseline == "naive"
    n_test = data.split.test.stop - data.split.test.start
    assert persistence.baseline_comparison.rows == n_test
    assert persistence.passed, persistence.gates
    if result.chosen == "persistence":
        scorer = OnnxScorer(tmp_path / "model.onnx")
        x = data.X_test
        up = scorer.predict_proba(x) >= 0.5
        assert np.array_equal(up[x[:, 0] != 0], (x[:, 0] > 0)[x[:, 0] != 0])
    else:  # xgboost had to beat persistence significantly to be chosen over it
        assert xgb.passed and xgb.baseline_comparison.p_value <= 0.025
