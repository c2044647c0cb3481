"""Classification metrics against hand-computed cases; undefined values are None."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trainers.errors import InvalidInputError
from trainers.metrics import classification_metrics, roc_auc

KEYS = {
    "n",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "log_loss",
    "brier",
    "positive_rate",
    "base_rate",
    "directional_accuracy",
}


def arr(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def test_hand_computed_case():
    """Five rows with two true positives, one false positive, one miss, one true negative."""
    y = arr(1, 0, 1, 1, 0)
    p = arr(0.9, 0.4, 0.6, 0.3, 0.7)
    m = classification_metrics(y, p)
    assert set(m) == KEYS
    assert m["n"] == 5
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(3 / 6)
    expected_ll = -(math.log(0.9) + 2 * math.log(0.6) + 2 * math.log(0.3)) / 5
    assert m["log_loss"] == pytest.approx(expected_ll)
    assert m["brier"] == pytest.approx((0.01 + 0.16 + 0.16 + 0.49 + 0.49) / 5)
    assert m["positive_rate"] == pytest.approx(0.6)
    assert m["base_rate"] == pytest.approx(0.6)
    assert m["directional_accuracy"] is None


@pytest.mark.parametrize(
    ("y", "p", "auc"),
    [
        (arr(0, 1, 0, 1), arr(0.2, 0.2, 0.8, 0.8), 0.5),
        (arr(0, 0, 1, 1), arr(0.1, 0.5, 0.5, 0.9), 3.5 / 4),
        (arr(0, 0, 1, 1), arr(0.1, 0.2, 0.3, 0.4), 1.0),
        (arr(1, 1, 0, 0), arr(0.1, 0.2, 0.3, 0.4), 0.0),
        (arr(1, 0, 1, 0), arr(0.5, 0.5, 0.5, 0.5), 0.5),
    ],
)
def test_roc_auc_counts_ties_as_half(y, p, auc):
    """ROC AUC is the share of positive-negative pairs ranked right, ties counting half."""
    assert roc_auc(y, p) == pytest.approx(auc)
    assert classification_metrics(y, p)["roc_auc"] == pytest.approx(auc)


def test_roc_auc_matches_pairwise_count_on_random_data():
    """The rank formula equals the brute-force pair count on random tied scores."""
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.4).astype(np.float64)
    p = np.round(rng.random(300), 1)
    pos, neg = p[y == 1], p[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(y, p) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_undefined_metrics_are_none_and_json_clean():
    """One label class and no predicted positives give None, never NaN, and valid JSON."""
    m = classification_metrics(arr(0, 0, 0), arr(0.1, 0.2, 0.3))
    assert m["roc_auc"] is None
    assert m["precision"] is None
    assert m["recall"] is None
    assert m["f1"] is None
    assert m["accuracy"] == 1.0
    json.dumps(m, allow_nan=False)


def test_f1_is_zero_when_every_prediction_misses():
    """Positives predicted, positives present, none hit: precision, recall and f1 are 0."""
    m = classification_metrics(arr(1, 0), arr(0.2, 0.8))
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)


def test_log_loss_clips_certain_mistakes():
    """A probability of exactly 1 on a 0 label costs -log(1e-7), not infinity."""
    m = classification_metrics(arr(0, 1), arr(1.0, 1.0))
    assert m["log_loss"] == pytest.approx(-math.log(1e-7) / 2, rel=1e-6)


def test_threshold_is_inclusive():
    """A probability equal to the threshold predicts up."""
    m = classification_metrics(arr(1, 0), arr(0.5, 0.49))
    assert m["accuracy"] == 1.0
    m = classification_metrics(arr(1, 0), arr(0.7, 0.6), threshold=0.65)
    assert m["accuracy"] == 1.0


def test_directional_accuracy_ignores_flat_returns():
    """Rows with zero forward return are left out; the rest compare predicted and real sign."""
    y = arr(1, 0, 0, 1, 0)
    p = arr(0.9, 0.8, 0.1, 0.2, 0.6)
    r = arr(0.01, -0.02, 0.0, 0.03, 0.0)
    m = classification_metrics(y, p, r)
    assert m["directional_accuracy"] == pytest.approx(1 / 3)
    flat = classification_metrics(y, p, np.zeros(5))
    assert flat["directional_accuracy"] is None


@pytest.mark.parametrize(
    ("y", "p", "r", "match"),
    [
        (arr(), arr(), None, "0 rows"),
        (np.zeros((2, 2)), np.zeros((2, 2)), None, "y_true must be 1-D"),
        (arr(1, 0), arr(0.5), None, "proba_up has 1 rows"),
        (arr(1, 0), arr(0.5, math.nan), None, "proba_up must be finite"),
        (arr(1, 2), arr(0.5, 0.5), None, "only 0.0 and 1.0, got 2.0"),
        (arr(1, math.inf), arr(0.5, 0.5), None, "y_true must be finite"),
        (arr(1, 0), arr(0.5, 1.5), None, r"\[0, 1\], got 1.5"),
        (arr(1, 0), arr(0.5, 0.5), arr(0.1), "fwd_returns has 1 rows"),
        (arr(1, 0), arr(0.5, 0.5), arr(0.1, math.nan), "fwd_returns must be finite"),
    ],
)
def test_bad_inputs_raise_naming_the_problem(y, p, r, match):
    """Wrong shapes, NaNs, non-binary labels and out-of-range probabilities raise clearly."""
    with pytest.raises(InvalidInputError, match=match):
        classification_metrics(y, p, r)


def test_bad_threshold_is_rejected():
    """A threshold outside [0, 1] or NaN raises InvalidInputError."""
    for t in (-0.1, 1.1, math.nan):
        with pytest.raises(InvalidInputError, match="threshold"):
            classification_metrics(arr(1, 0), arr(0.5, 0.5), threshold=t)
