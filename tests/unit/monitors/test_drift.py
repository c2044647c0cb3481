"""Feature drift: PSI and KS functions, the stored reference, and the rolling DriftMonitor."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from monitors.drift import (
    EPSILON,
    DriftMonitor,
    FeatureReference,
    bin_proportions,
    ks_statistic,
    psi,
    quantile_edges,
)

NAMES = ("ret_1", "ret_2", "ret_20", "vol_20", "trend", "volume")


def feature_feed(seed: int, n: int, change_at: int | None = None, factor: float = 3.0):
    """Rows of six market-like features; from ``change_at`` on, volatility is x ``factor``.

    ret_20, vol_20 and trend carry 20+ rows of memory, as real market features
    do; volume does not move with volatility.
    """
    rng = np.random.default_rng(seed)
    lead = 60
    vol = np.ones(n + lead)
    if change_at is not None:
        vol[lead + change_at :] = factor
    r = rng.normal(0.0, 1.0, n + lead) * vol
    c = np.concatenate([[0.0], np.cumsum(r)])
    sq = np.concatenate([[0.0], np.cumsum(r * r)])
    ret20 = (c[20:] - c[:-20])[-n:]
    vol20 = np.sqrt((sq[20:] - sq[:-20]) / 20)[-n:]
    trend = np.zeros(n + lead)
    for t in range(1, n + lead):
        trend[t] = 0.95 * trend[t - 1] + 0.05 * r[t]
    volume = rng.lognormal(0.0, 0.3, n + lead)
    return np.column_stack(
        [r[lead:], r[lead:] + r[lead - 1 : -1], ret20, vol20, trend[lead:], volume[lead:]]
    )


# --- psi / ks -----------------------------------------------------------------------------


def test_psi_of_identical_samples_is_zero():
    """A sample compared with itself has PSI exactly 0."""
    x = np.random.default_rng(0).normal(size=1000)
    assert psi(x, x) == 0.0


def test_psi_same_distribution_is_small():
    """Two independent samples of one distribution have PSI near 0 (bounded, fixed seed)."""
    rng = np.random.default_rng(1)
    assert psi(rng.normal(size=5000), rng.normal(size=5000)) < 0.02


def test_psi_volatility_x3_is_large():
    """Volatility x3 moves most mass to the outer deciles: PSI far above 0.25."""
    rng = np.random.default_rng(2)
    assert psi(rng.normal(size=5000), 3.0 * rng.normal(size=5000)) > 0.8


def test_psi_empty_bin_is_finite():
    """Live data that leaves bins empty gives a finite PSI (bins floored at EPSILON)."""
    expected = np.arange(100.0)
    value = psi(expected, np.full(50, 50.5))
    assert math.isfinite(value)
    # All live mass in one bin, the other nine empty and floored at EPSILON.
    e = bin_proportions(quantile_edges(expected), expected)
    a = np.maximum(bin_proportions(quantile_edges(expected), [50.5]), EPSILON)
    assert value == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    assert value > 5.0


def test_value_on_an_edge_belongs_to_the_bin_above():
    """A value equal to a bin edge is counted in the upper bin."""
    edges = np.array([1.0, 2.0])
    assert list(bin_proportions(edges, [1.0, 2.0])) == [0.0, 0.5, 0.5]


def test_ties_merge_bins():
    """A discrete feature gets one bin per value, and shifts either way show in PSI."""
    binary = np.array([0.0] * 70 + [1.0] * 30)
    edges = quantile_edges(binary)
    assert list(edges) == [0.0, 1.0, math.nextafter(1.0, math.inf)]
    assert list(bin_proportions(edges, binary)) == [0.0, 0.7, 0.3, 0.0]
    constant = np.full(100, 5.0)
    assert psi(constant, constant) == 0.0
    assert psi(constant, constant + 1.0) > 5.0
    assert psi(constant, constant - 1.0) > 5.0


@pytest.mark.parametrize(
    ("expected", "actual"),
    [([], [1.0]), ([1.0, math.nan], [1.0]), ([1.0, 2.0], [math.inf]), ([[1.0]], [1.0])],
)
def test_psi_rejects_bad_input(expected, actual):
    """Empty, non-finite or non-1-D samples raise ValueError."""
    with pytest.raises(ValueError, match="must be"):
        psi(expected, actual)


def test_psi_rejects_fewer_than_two_bins():
    """bins must be at least 2."""
    with pytest.raises(ValueError, match="bins must be >= 2, got 1"):
        psi([1.0, 2.0], [1.0], bins=1)


def test_ks_statistic_same_and_shifted():
    """KS keeps a same-distribution pair (p > 0.05) and rejects a shifted one (p < 1e-6)."""
    rng = np.random.default_rng(3)
    same = ks_statistic(rng.normal(size=1000), rng.normal(size=1000))
    shifted = ks_statistic(rng.normal(size=1000), rng.normal(0.5, 1.0, size=1000))
    assert same.p_value > 0.05 and 0.0 <= same.statistic < 0.1
    assert shifted.p_value < 1e-6 and shifted.statistic > 0.15


# --- FeatureReference ------------------------------------------------------------------------


def test_reference_round_trips_through_json_and_stays_small():
    """to_dict -> JSON -> from_dict gives an equal reference, a few KB for 15 features."""
    x = np.random.default_rng(4).normal(size=(3000, 15))
    names = [f"f{i}" for i in range(15)]
    ref = FeatureReference.from_matrix(x, names)
    text = json.dumps(ref.to_dict())
    assert FeatureReference.from_dict(json.loads(text)) == ref
    assert len(text) < 10_000
    assert all(len(p) == 10 for p in ref.proportions)
    assert all(sum(p) == pytest.approx(1.0) for p in ref.proportions)


def test_reference_rejects_bad_matrix():
    """Shape mismatch, too few rows, duplicate names and NaN raise ValueError naming the issue."""
    x = np.zeros((50, 2))
    with pytest.raises(ValueError, match="one column per name"):
        FeatureReference.from_matrix(x, ["a"])
    with pytest.raises(ValueError, match="at least bins=10 rows"):
        FeatureReference.from_matrix(x[:5], ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        FeatureReference.from_matrix(x, ["a", "a"])
    x[7, 1] = math.nan
    with pytest.raises(ValueError, match="feature 'b'"):
        FeatureReference.from_matrix(x, ["a", "b"])


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(version=2), "version"),
        (lambda d: d.pop("n_rows"), "malformed"),
        (lambda d: d["features"][0].update(proportions=[0.5, 0.5]), "proportions"),
        (lambda d: d["features"][0].update(edges=[]), "edges"),
        (lambda d: d["features"][0].update(proportions=[0.9] + [0.1 / 9] * 8 + [0.1]), "sum 1"),
    ],
)
def test_reference_from_dict_rejects_malformed(mutate, match):
    """A corrupted stored reference raises ValueError saying what is wrong."""
    data = FeatureReference.from_matrix(np.random.default_rng(5).normal(size=(200, 2)), "ab")
    d = json.loads(json.dumps(data.to_dict()))
    mutate(d)
    with pytest.raises(ValueError, match=match):
        FeatureReference.from_dict(d)


# --- DriftMonitor -------------------------------------------------------------------------


def reference(seed: int = 0, n: int = 3000) -> FeatureReference:
    return FeatureReference.from_matrix(feature_feed(seed, n), NAMES)


def test_monitor_silent_until_min_samples():
    """update returns None until min_samples rows are in, then a report on every row."""
    monitor = DriftMonitor(reference(), window=50, min_samples=20)
    rows = feature_feed(1, 30)
    reports = [monitor.update(row) for row in rows]
    assert reports[:19] == [None] * 19
    assert all(r is not None for r in reports[19:])
    assert reports[19] is not None and reports[19].n_samples == 20
    assert reports[-1] is not None and reports[-1].n_samples == 30


def test_incremental_counts_match_a_recount():
    """After many more rows than the window, PSI equals a from-scratch count of the last window."""
    ref = reference()
    monitor = DriftMonitor(ref, window=200, min_samples=200)
    rows = feature_feed(2, 1234, change_at=600)
    for row in rows:
        report = monitor.update(row)
    assert report is not None and report.n_samples == 200
    for j, name in enumerate(NAMES):
        edges = np.array(ref.edges[j])
        expected = np.array(ref.proportions[j])
        actual = bin_proportions(edges, rows[-200:, j])
        e, a = np.maximum(expected, EPSILON), np.maximum(actual, EPSILON)
        assert report.psi[name] == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
        ks = np.abs(np.cumsum(actual) - np.cumsum(expected))[:-1].max()
        assert report.ks[name] == pytest.approx(ks)


@pytest.mark.parametrize("seed", range(5))
def test_unchanged_feed_never_fires(seed):
    """5,000 live rows of the training process: never drifted, at most 3 of 6 features high."""
    rows = feature_feed(seed, 8000)
    monitor = DriftMonitor(FeatureReference.from_matrix(rows[:3000], NAMES))
    most = 0
    for row in rows[3000:]:
        report = monitor.update(row)
        if report is not None:
            assert not report.drifted, report.to_dict()
            most = max(most, len(report.drifted_features))
    assert most <= 3 < monitor.min_features


@pytest.mark.parametrize("seed", range(5))
def test_volatility_x3_fires_within_400_rows(seed):
    """After 1,000 unchanged live rows, volatility x3 makes drift fire within 400 rows."""
    rows = feature_feed(seed, 5000, change_at=4000)
    monitor = DriftMonitor(FeatureReference.from_matrix(rows[:3000], NAMES))
    fired = next(
        (i, r)
        for i, r in enumerate(map(monitor.update, rows[3000:]))
        if r is not None and r.drifted
    )
    assert 1000 <= fired[0] < 1400
    assert "volume" not in fired[1].drifted_features  # unaffected by volatility


def test_threshold_boundary_is_strict():
    """A feature whose PSI equals the threshold exactly is not counted as drifted."""
    ref = reference()
    rows = feature_feed(3, 300, change_at=150)
    probe = DriftMonitor(ref, window=300, min_samples=300, min_features=1)
    for row in rows:
        report = probe.update(row)
    assert report is not None
    value = report.psi["ret_1"]
    at = DriftMonitor(ref, window=300, min_samples=300, psi_threshold=value, min_features=1)
    below = DriftMonitor(
        ref, window=300, min_samples=300, psi_threshold=math.nextafter(value, 0), min_features=1
    )
    for row in rows:
        at_report, below_report = at.update(row), below.update(row)
    assert at_report is not None and "ret_1" not in at_report.drifted_features
    assert below_report is not None and "ret_1" in below_report.drifted_features


def test_min_features_one_is_the_max_psi_rule():
    """With min_features=1 a single drifted feature fires; the report names the worst one."""
    ref = reference()
    # A high threshold: single autocorrelated features wander above 0.35 on their own.
    monitor = DriftMonitor(ref, window=200, min_samples=200, psi_threshold=2.0, min_features=1)
    rows = feature_feed(4, 200)
    rows[:, 5] = 100.0  # only volume moves
    for row in rows:
        report = monitor.update(row)
    assert report is not None and report.drifted
    assert report.drifted_features == ("volume",)
    assert report.worst_feature == "volume" and report.max_psi == report.psi["volume"]
    assert json.loads(json.dumps(report.to_dict()))["drifted"] is True


def test_default_min_features_is_a_majority():
    """By default more than half of the features must exceed the threshold."""
    assert DriftMonitor(reference()).min_features == 4  # of 6


def test_update_rejects_bad_rows():
    """A row of the wrong length or with a NaN raises ValueError naming the problem."""
    monitor = DriftMonitor(reference())
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        monitor.update(np.zeros(5))
    row = np.zeros(6)
    row[3] = math.nan
    with pytest.raises(ValueError, match="vol_20"):
        monitor.update(row)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window": 0}, "window"),
        ({"window": 100, "min_samples": 200}, "min_samples"),
        ({"psi_threshold": 0.0}, "psi_threshold"),
        ({"min_features": 7}, "min_features"),
    ],
)
def test_monitor_rejects_bad_settings(kwargs, match):
    """Out-of-range settings raise ValueError naming the setting."""
    with pytest.raises(ValueError, match=match):
        DriftMonitor(reference(), **kwargs)


def test_add_decides_as_the_report_and_keeps_its_psi():
    """``add`` (the live path's) fires exactly when ``update``'s report says drifted, through a
    change; ``psi()`` is that report's PSI, and empty before min_samples."""
    rows = feature_feed(3, 5000, change_at=4000)
    ref = FeatureReference.from_matrix(rows[:3000], NAMES)
    fast, full = DriftMonitor(ref, window=300), DriftMonitor(ref, window=300)
    assert fast.psi() == {}
    decisions = []
    for row in rows[3000:]:
        drifted, report = fast.add(row), full.update(row)
        assert (drifted is None) == (report is None)
        if report is not None:
            assert drifted == report.drifted
            assert fast.psi() == report.psi
            decisions.append(drifted)
    assert decisions[0] is False and decisions[-1] is True
