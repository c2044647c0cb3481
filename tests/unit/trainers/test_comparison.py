"""Paired tests and Friedman/Nemenyi: size under the null, power, and textbook numbers.

Rates are judged with a tolerance of three binomial standard errors of the
number of simulated draws, so a correct test fails here about 3 times in 1,000.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import friedmanchisquare

from trainers.comparison import diebold_mariano, friedman_nemenyi, mcnemar
from trainers.errors import InvalidInputError

ALPHA = 0.05
DRAWS = 2000
TOLERANCE = 3 * math.sqrt(ALPHA * (1 - ALPHA) / DRAWS)  # ~0.015


def rejection_rate(p_values: list[float]) -> float:
    return float(np.mean(np.asarray(p_values) < ALPHA))


# --- McNemar --------------------------------------------------------------------------


def test_mcnemar_counts_discordant_rows_and_signs_the_statistic_for_a():
    """Only rows where exactly one is right count; a positive statistic favours a."""
    a = np.array([True, True, True, False, True, False])
    b = np.array([True, False, False, False, True, True])
    test = mcnemar(a, b)
    assert (test.rows, test.a_wins, test.b_wins) == (6, 2, 1)
    assert test.statistic == pytest.approx(1 / math.sqrt(3))
    assert test.effect == pytest.approx(1 / 6)
    # mid-p: 2 * (P(X <= 1) - P(X = 1) / 2) for X ~ Bin(3, 1/2) = 2 * (4/8 - 3/16)
    assert test.p_value == pytest.approx(0.625)


def test_mcnemar_without_discordant_rows_is_p_one():
    """Identical predictions carry no evidence: statistic 0, p-value 1."""
    same = np.array([True, False, True])
    assert (mcnemar(same, same).statistic, mcnemar(same, same).p_value) == (0.0, 1.0)


def test_mcnemar_size_is_alpha_under_the_null():
    """Two equally accurate, independent models: rejected at about alpha (2,000 draws)."""
    rng = np.random.default_rng(1)
    p = [mcnemar(rng.random(200) < 0.55, rng.random(200) < 0.55).p_value for _ in range(DRAWS)]
    assert abs(rejection_rate(p) - ALPHA) < TOLERANCE


def test_mcnemar_detects_a_ten_point_accuracy_difference():
    """60% vs 50% right on 800 rows is found at least 90% of the time."""
    rng = np.random.default_rng(2)
    p = [mcnemar(rng.random(800) < 0.6, rng.random(800) < 0.5).p_value for _ in range(300)]
    assert rejection_rate(p) > 0.9


# --- Diebold-Mariano ------------------------------------------------------------------


def test_dm_size_is_alpha_under_the_null():
    """Equal expected losses, one-step horizon: rejected at about alpha (2,000 draws)."""
    rng = np.random.default_rng(3)
    p = [
        diebold_mariano(rng.exponential(size=200), rng.exponential(size=200)).p_value
        for _ in range(DRAWS)
    ]
    assert abs(rejection_rate(p) - ALPHA) < TOLERANCE


def test_dm_detects_a_lower_expected_loss_and_signs_it_for_a():
    """a's loss 0.3 sd lower on 300 rows: found >= 90% of the time, statistic positive."""
    rng = np.random.default_rng(4)
    tests = [diebold_mariano(rng.normal(0.7, 1, 300), rng.normal(1.0, 1, 300)) for _ in range(300)]
    assert rejection_rate([t.p_value for t in tests]) > 0.9
    assert all(t.statistic > 0 and t.effect > 0 for t in tests if t.p_value < ALPHA)


def test_dm_hac_variance_holds_size_where_the_naive_variance_over_rejects():
    """Overlapping 5-step losses (MA(4) differential): horizon=1 rejects far above alpha,
    horizon=5 (HAC over 4 lags, HLN-corrected) stays near alpha."""
    rng = np.random.default_rng(5)
    h, n = 5, 400
    naive, hac = [], []
    for _ in range(DRAWS):
        shocks = rng.standard_normal(n + h - 1)
        d = np.convolve(shocks, np.ones(h), mode="valid")  # MA(h-1), mean 0
        naive.append(diebold_mariano(d, np.zeros(n), horizon=1).p_value)
        hac.append(diebold_mariano(d, np.zeros(n), horizon=h).p_value)
    assert rejection_rate(naive) > 0.25
    assert abs(rejection_rate(hac) - ALPHA) < TOLERANCE


def test_dm_identical_losses_are_p_one():
    """No differential, no evidence: statistic 0, p-value 1."""
    loss = np.array([0.1, 0.5, 0.7])
    test = diebold_mariano(loss, loss)
    assert (test.statistic, test.p_value, test.a_wins, test.b_wins) == (0.0, 1.0, 0, 0)


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "match"),
    [
        ([1.0, 2.0], [1.0], {}, "loss_b has 1 rows"),
        ([1.0], [2.0], {}, "at least 2 rows"),
        ([1.0, math.nan], [1.0, 2.0], {}, "loss_a must be finite"),
        ([1.0, 2.0], [1.0, 2.0], {"horizon": 0}, "horizon must be >= 1"),
    ],
)
def test_dm_rejects_bad_input_naming_it(a, b, kwargs, match):
    """Unequal, too short or non-finite losses and a horizon below 1 raise, saying which."""
    with pytest.raises(InvalidInputError, match=match):
        diebold_mariano(np.array(a), np.array(b), **kwargs)


# --- Friedman / Nemenyi ---------------------------------------------------------------

# Accuracies of four C4.5 variants on 14 data sets whose ranks give the mean ranks of
# Demšar (2006, JMLR 7, section 3.2.4 / Table 6): 3.143, 2.000, 2.893, 1.964.
DEMSAR = np.array(
    [
        [0.763, 0.768, 0.771, 0.798],
        [0.599, 0.591, 0.590, 0.569],
        [0.954, 0.971, 0.968, 0.967],
        [0.628, 0.661, 0.657, 0.657],
        [0.882, 0.888, 0.886, 0.898],
        [0.936, 0.931, 0.916, 0.931],
        [0.661, 0.668, 0.609, 0.685],
        [0.583, 0.583, 0.563, 0.625],
        [0.775, 0.838, 0.866, 0.875],
        [1.000, 1.000, 1.000, 1.000],
        [0.940, 0.962, 0.965, 0.962],
        [0.619, 0.666, 0.614, 0.669],
        [0.972, 0.981, 0.975, 0.975],
        [0.957, 0.978, 0.946, 0.970],
    ]
)
C45 = ("C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf")


def test_friedman_nemenyi_reproduces_demsars_worked_example():
    """chi2_F 9.28, F_F 3.69 on (3, 39) df, CD 1.25 at 0.05 (no pair differs) and 1.12 at
    0.10 (C4.5 differs from C4.5+m and from C4.5+m+cf), as Demšar computes them."""
    at_05 = friedman_nemenyi(DEMSAR, C45, 0.05, method="iman_davenport")
    assert at_05.mean_ranks == pytest.approx((3.143, 2.000, 2.893, 1.964), abs=5e-4)
    assert at_05.statistic == pytest.approx(9.28, abs=0.01)
    assert at_05.f_statistic == pytest.approx(3.69, abs=0.01)
    assert at_05.p_value < 0.05  # F(3, 39) critical value 2.85
    assert at_05.critical_difference == pytest.approx(1.25, abs=0.005)
    assert at_05.differ == ()
    at_10 = friedman_nemenyi(DEMSAR, C45, 0.10, method="iman_davenport")
    assert at_10.critical_difference == pytest.approx(1.12, abs=0.005)
    assert at_10.differ == (("C4.5", "C4.5+m"), ("C4.5", "C4.5+m+cf"))


def test_friedman_exact_p_on_few_folds():
    """Two models, three folds, the same one better each time: exact p = 2 / 2**3 = 0.25
    (Iman-Davenport would say 0: its F is infinite whenever every block agrees)."""
    result = friedman_nemenyi(np.array([[0.6, 0.5], [0.7, 0.5], [0.55, 0.5]]), ["a", "b"])
    assert (result.method, result.p_value, result.mean_ranks) == ("exact", 0.25, (1.0, 2.0))
    forced = friedman_nemenyi(
        np.array([[0.6, 0.5], [0.7, 0.5], [0.55, 0.5]]), ["a", "b"], method="iman_davenport"
    )
    assert forced.p_value == 0.0 and forced.f_statistic == math.inf


def test_friedman_statistic_matches_scipy_and_exact_p_is_close_to_iman_davenport():
    """Without ties the chi-square is scipy's; on 14 blocks exact and F p-values agree."""
    rng = np.random.default_rng(6)
    scores = rng.random((14, 4)) + np.array([0.0, 0.1, 0.2, 0.3])
    exact = friedman_nemenyi(scores, list("abcd"))
    approx = friedman_nemenyi(scores, list("abcd"), method="iman_davenport")
    assert exact.statistic == pytest.approx(friedmanchisquare(*scores.T).statistic)
    assert exact.method == "exact"
    assert exact.p_value == pytest.approx(approx.p_value, abs=0.01)


def test_friedman_falls_back_to_iman_davenport_when_the_exact_p_is_costly():
    """Eight models over five blocks: (8!)^4 rankings, so the F approximation is used."""
    scores = np.random.default_rng(8).random((5, 8))
    result = friedman_nemenyi(scores, list("abcdefgh"))
    assert result.method == "iman_davenport" and result.f_statistic is not None


def test_friedman_exact_size_never_exceeds_alpha():
    """Three models, three folds, no difference: rejected at most alpha of the time."""
    rng = np.random.default_rng(7)
    p = [friedman_nemenyi(rng.random((3, 3)), list("abc")).p_value for _ in range(500)]
    assert rejection_rate(p) <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / 500)


@pytest.mark.parametrize(
    ("scores", "names", "match"),
    [
        (np.ones((1, 3)), list("abc"), "both >= 2"),
        (np.ones((3, 2)), list("abc"), "3 names for 2 models"),
        (np.array([[1.0, math.inf], [1.0, 2.0]]), list("ab"), "finite"),
    ],
)
def test_friedman_rejects_bad_input(scores, names, match):
    """Too few blocks or models, mismatched names and non-finite scores raise."""
    with pytest.raises(InvalidInputError, match=match):
        friedman_nemenyi(scores, names)
