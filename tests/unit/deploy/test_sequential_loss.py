"""The return-model promotion test: error rates, power, restart state, bad input, the cap."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy.signal import lfilter

from deploy.sequential import (
    BET_GRID,
    Decision,
    PairedSequentialTest,
    PromotionTestConfig,
    log_mean_exp,
    log_threshold,
)
from deploy.sequential_loss import CAP_RMSE_MULTIPLE, PairedLossTest, loss_cap

Floats = npt.NDArray[np.float64]
CONFIG = PromotionTestConfig(alpha=0.05, min_samples=100, max_samples=2000)
CONTINUE, PROMOTE, REJECT = 0, 1, 2
CODES = {Decision.CONTINUE: CONTINUE, Decision.PROMOTE: PROMOTE, Decision.REJECT: REJECT}


def replay(
    champion: Floats, shadow: Floats, cap: float, config: PromotionTestConfig = CONFIG
) -> tuple[npt.NDArray[np.int_], npt.NDArray[np.int_]]:
    """(decision code, bars fed when decided) of many trials at once: the class's wealth
    recursion as cumulative sums over bars (``test_replay_matches_the_class`` pins it)."""
    x = increments(champion, shadow, cap)
    d = config.min_effect
    bars = np.arange(1, x.shape[1] + 1)
    live = (bars >= config.min_samples) & (bars <= config.max_samples)
    threshold = log_threshold(config.alpha)
    codes = np.full(len(x), CONTINUE)
    stops = np.full(len(x), min(x.shape[1], config.max_samples))
    if x.shape[1] >= config.max_samples:
        codes[:] = REJECT
    for lo in range(0, len(x), 100):
        rows = x[lo : lo + 100, :, None]
        better = log_mean_exp(np.cumsum(np.log1p(BET_GRID / (1 + d) * (rows - d)), axis=1))
        worse = log_mean_exp(np.cumsum(np.log1p(-BET_GRID * rows), axis=1))
        reject, promote = (worse >= threshold) & live, (better >= threshold) & live
        decided = (reject | promote).any(axis=1)
        first = (reject | promote).argmax(axis=1)
        at = np.arange(len(rows))
        codes[lo : lo + 100][decided] = np.where(reject[at, first], REJECT, PROMOTE)[decided]
        stops[lo : lo + 100][decided] = first[decided] + 1
    return codes, stops


def increments(champion: Floats, shadow: Floats, cap: float) -> Floats:
    """x_t: the truncated squared-error differential in units of cap^2."""
    cap2 = cap * cap
    return (np.minimum(champion**2, cap2) - np.minimum(shadow**2, cap2)) / cap2


def naive_ever_promotes(x: Floats, config: PromotionTestConfig = CONFIG) -> npt.NDArray[np.bool_]:
    """A one-sided z-test of mean(x) > 0 at alpha re-checked after every bar: invalid."""
    n = np.arange(1, x.shape[1] + 1)
    mean = np.cumsum(x, axis=1) / n
    sd = np.sqrt(np.maximum(np.cumsum(x**2, axis=1) / n - mean**2, 1e-12))
    z = (mean * np.sqrt(n) / sd)[:, config.min_samples - 1 : config.max_samples]
    return np.asarray((z > 1.645).any(axis=1), dtype=np.bool_)


def student_t(
    rng: np.random.Generator, shape: tuple[int, int], sd: float, df: float = 3.0
) -> Floats:
    """Student-t errors scaled to standard deviation ``sd`` (heavy tails, like returns)."""
    return rng.standard_t(df, size=shape) * sd / math.sqrt(df / (df - 2.0))


def clustered_market(
    rng: np.random.Generator, shape: tuple[int, int], champion_noise: float, shadow_noise: float
) -> tuple[Floats, Floats, Floats]:
    """(champion errors, shadow errors, returns): AR(1) returns with stochastic volatility
    (log vol AR(1), sd 0.4); both models predict the AR part plus noise of their own, so
    with equal noise the null holds at every bar, given everything before it."""
    log_vol = lfilter([1.0], [1.0, -0.98], rng.normal(0.0, 0.08, shape), axis=1)
    returns = lfilter([1.0], [1.0, -0.3], np.exp(log_vol) * rng.standard_normal(shape), axis=1)
    ar_part = 0.3 * np.concatenate([np.zeros((shape[0], 1)), returns[:, :-1]], axis=1)
    champion = ar_part + rng.normal(0.0, champion_noise, shape) - returns
    shadow = ar_part + rng.normal(0.0, shadow_noise, shape) - returns
    return champion, shadow, returns


def ceiling(alpha: float, trials: int) -> float:
    """``alpha`` plus three binomial standard errors: a rate above it is not noise."""
    return alpha + 3.0 * math.sqrt(alpha * (1.0 - alpha) / trials)


def rate(codes: npt.NDArray[np.int_], code: int) -> float:
    return float(np.mean(codes == code))


def feed(test: PairedLossTest, champion: Floats, shadow: Floats) -> list[Decision]:
    """Update bar by bar (hits: the error is below 1 in size); decisions after every bar."""
    return [
        test.update(float(c), float(s), abs(c) < 1.0, abs(s) < 1.0)
        for c, s in zip(champion, shadow, strict=True)
    ]


def test_replay_matches_the_class() -> None:
    """The vectorised replay the error-rate tests use decides as the class does, bar for bar."""
    rng = np.random.default_rng(7)
    config = PromotionTestConfig(alpha=0.05, min_samples=50, max_samples=600, min_effect=0.01)
    shape, seen = (8, 600), set()
    for shadow_sd in (0.6, 1.0, 1.6):
        champion, shadow = student_t(rng, shape, 1.0), student_t(rng, shape, shadow_sd)
        codes, stops = replay(champion, shadow, 2.5, config)
        seen |= set(codes.tolist())
        for i in range(shape[0]):
            test = PairedLossTest(config, 2.5)
            decisions = feed(test, champion[i], shadow[i])
            assert CODES[decisions[-1]] == codes[i]
            assert test.n == stops[i]
    assert seen == {PROMOTE, REJECT}


def test_null_heavy_tails_promotes_at_most_alpha() -> None:
    """Equal Student-t(3) errors: P(PROMOTE within 2,000 bars) and P(early REJECT) <= alpha
    (measured 0.0145 and 0.0155 of 2,000); a z-test re-checked every bar promotes in 0.30."""
    trials = 2000
    rng = np.random.default_rng(11)
    champion, shadow = student_t(rng, (trials, 2000), 1.0), student_t(rng, (trials, 2000), 1.0)
    codes, stops = replay(champion, shadow, 4.0)
    assert rate(codes, PROMOTE) <= ceiling(CONFIG.alpha, trials)
    assert np.mean((codes == REJECT) & (stops < 2000)) <= ceiling(CONFIG.alpha, trials)
    assert np.mean(naive_ever_promotes(increments(champion, shadow, 4.0))) > 2 * CONFIG.alpha


def test_null_clustered_autocorrelated_returns_promotes_at_most_alpha() -> None:
    """Autocorrelated returns with volatility clusters, equally good models: <= alpha
    (measured 0.011 of 2,000); a shadow with ~5% larger errors less often (0.001 of 1,000)."""
    trials = 2000
    rng = np.random.default_rng(12)
    _, _, history = clustered_market(rng, (1, 500), 1.0, 1.0)
    cap = loss_cap(None, None, history[0])  # as live: no RMSE, the recent realised moves
    champion, shadow, _ = clustered_market(rng, (trials, 2000), 1.0, 1.0)
    null, _ = replay(champion, shadow, cap)
    champion, shadow, _ = clustered_market(rng, (trials // 2, 2000), 1.0, 1.1)
    worse, _ = replay(champion, shadow, cap)
    assert rate(null, PROMOTE) <= ceiling(CONFIG.alpha, trials)
    assert rate(worse, PROMOTE) <= rate(null, PROMOTE) / 2


def test_a_gain_below_min_effect_promotes_at_most_alpha() -> None:
    """A shadow better by just less than ``min_effect`` (in cap^2 units) is a null: <= alpha
    (measured 0.008 of 1,000), though with no margin it is promoted almost always (0.98)."""
    trials = 1000
    rng = np.random.default_rng(13)
    # E[x] = (1 - 0.9^2) / 4^2 less a little truncation = 0.01187 (Gaussian errors, cap 4).
    champion, shadow = rng.normal(0, 1.0, (trials, 2000)), rng.normal(0, 0.9, (trials, 2000))
    margin = PromotionTestConfig(alpha=0.05, min_samples=100, max_samples=2000, min_effect=0.012)
    assert rate(replay(champion, shadow, 4.0, margin)[0], PROMOTE) <= ceiling(0.05, trials)
    assert rate(replay(champion[:300], shadow[:300], 4.0)[0], PROMOTE) >= 0.9


def test_a_shadow_with_20_percent_smaller_errors_is_promoted() -> None:
    """Student-t(3) errors, shadow sd 0.8x, cap 4x the champion's RMSE: promoted in most
    trials within 2,000 bars (measured 0.975 of 1,000, median 662 bars)."""
    trials = 1000
    rng = np.random.default_rng(14)
    champion, shadow = student_t(rng, (trials, 2000), 1.0), student_t(rng, (trials, 2000), 0.8)
    codes, stops = replay(champion, shadow, loss_cap(1.0, 0.8))
    assert rate(codes, PROMOTE) >= 0.9
    assert np.median(stops[codes == PROMOTE]) < 1000


def test_a_much_worse_shadow_is_rejected_early() -> None:
    """A shadow with 50% larger errors is rejected well before max_samples (measured: all
    500, median 306 bars)."""
    trials = 500
    rng = np.random.default_rng(15)
    champion, shadow = student_t(rng, (trials, 2000), 1.0), student_t(rng, (trials, 2000), 1.5)
    codes, stops = replay(champion, shadow, loss_cap(1.0, 1.5))
    early = (codes == REJECT) & (stops < CONFIG.max_samples)
    assert np.mean(early) >= 0.95
    assert np.median(stops[early]) < 500


def test_nothing_is_decided_before_min_samples_and_a_decision_is_final() -> None:
    """A perfect shadow waits for min_samples; after PROMOTE, updates change nothing."""
    test = PairedLossTest(PromotionTestConfig(min_samples=30), cap=1.0)
    decisions = [test.update(1.0, 0.0, False, True) for _ in range(40)]
    assert decisions[:29] == [Decision.CONTINUE] * 29
    assert decisions[29] is Decision.PROMOTE
    assert test.n == 30
    assert test.evidence.shadow_correct == 30


def test_updating_a_shallow_copy_leaves_the_original_alone() -> None:
    """The live path updates copy.copy(test) and keeps the original if its commit fails."""
    original = PairedLossTest(CONFIG, 1.0)
    original.update(0.5, 0.1, True, True)
    before = original.to_dict()
    copy.copy(original).update(0.9, 0.0, False, True)
    assert original.to_dict() == before


def test_a_lower_promote_alpha_asks_for_more_evidence() -> None:
    """promote_alpha raises the bar PROMOTE must reach on that bar."""
    strict, loose = PairedLossTest(CONFIG, 1.0), PairedLossTest(CONFIG, 1.0)
    for _ in range(CONFIG.min_samples):
        loose.update(0.6, 0.5, True, True)
        strict.update(0.6, 0.5, True, True, promote_alpha=1e-12)
    assert loose.decision is Decision.PROMOTE
    assert strict.decision is Decision.CONTINUE


def test_evidence_reports_hits_and_truncated_losses() -> None:
    """Hit counts, discordance and rates come from the hits; losses are mean min(e^2, cap^2)."""
    test = PairedLossTest(CONFIG, cap=2.0)
    test.update(0.5, -3.0, True, False)
    test.update(-1.0, 0.0, False, True)
    test.update(1.0, 1.0, True, True)
    ev = test.evidence
    assert (ev.n, ev.champion_correct, ev.shadow_correct) == (3, 2, 2)
    assert (ev.shadow_only, ev.champion_only) == (1, 1)
    assert ev.champion_accuracy == ev.shadow_accuracy == pytest.approx(2 / 3)
    assert ev.champion_loss == pytest.approx((0.25 + 1 + 1) / 3)
    assert ev.shadow_loss == pytest.approx((4 + 0 + 1) / 3)
    assert (ev.champion_log_loss, ev.shadow_log_loss, ev.loss) == (None, None, "squared_error")
    assert ev.e_value_worse > 1.0 > ev.e_value_better
    assert PairedSequentialTest(CONFIG).evidence.loss == "log_loss"


def test_observe_takes_errors_and_sign_hits_from_predictions() -> None:
    """observe(prediction, prediction, realised) is update(prediction - realised, ..., hits)."""
    observed, updated = PairedLossTest(CONFIG, 0.1), PairedLossTest(CONFIG, 0.1)
    observed.observe(0.01, -0.02, 0.005)
    updated.update(0.01 - 0.005, -0.02 - 0.005, True, False)
    observed.observe(0.01, -0.01, 0.0)  # a zero realised return: a hit for neither
    updated.update(0.01, -0.01, False, False)
    assert observed.to_dict() == updated.to_dict()


def run(test: PairedLossTest, champion: Floats, shadow: Floats, start: int = 0) -> list[Decision]:
    """Feed bars from ``start`` on with promote_alpha varying by bar, as the fleet-wide
    procedure (deploy.fdr) does."""
    return [
        test.update(float(c), float(s), c > 0, s > 0, promote_alpha=0.05 / (1 + i % 3))
        for i, (c, s) in enumerate(zip(champion, shadow, strict=True), start)
    ]


@pytest.mark.parametrize("cut", [0, 1, 99, 100, 250, 700])
def test_a_restored_trial_continues_exactly(cut: int) -> None:
    """to_dict -> JSON -> from_dict at any bar gives the same decisions and evidence."""
    rng = np.random.default_rng(16)
    champion, shadow = student_t(rng, (1, 800), 1.0)[0], student_t(rng, (1, 800), 0.7)[0]
    config = PromotionTestConfig(alpha=0.05, min_samples=100, max_samples=800, min_effect=0.005)
    whole = PairedLossTest(config, 3.7)
    expected = run(whole, champion, shadow)
    first = PairedLossTest(config, 3.7)
    head = run(first, champion[:cut], shadow[:cut])
    restored = PairedLossTest.from_dict(json.loads(json.dumps(first.to_dict())))
    assert restored.to_dict() == first.to_dict()
    assert head + run(restored, champion[cut:], shadow[cut:], cut) == expected
    assert restored.evidence == whole.evidence
    assert restored.to_dict() == whole.to_dict()
    assert Decision.PROMOTE in expected


def corrupt(**changes: Any) -> dict[str, Any]:
    test = PairedLossTest(CONFIG, 2.0)
    for _ in range(120):
        test.update(0.5, 1.5, True, False)
    state = test.to_dict()
    for key, value in changes.items():
        if value is KeyError:
            del state[key]
        else:
            state[key] = value
    return state


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"version": 2}, "version"),
        ({"kind": "accuracy"}, "kind"),
        ({"cap": KeyError}, "cap"),
        ({"cap": -1.0}, "cap"),
        ({"cap": float("nan")}, "cap"),
        ({"config": {"alpha": 2.0}}, "alpha"),
        ({"config": None}, "malformed"),
        ({"n": -1}, "n"),
        ({"shadow_only": True}, "shadow_only"),
        ({"champion_correct": 121}, "inconsistent"),
        ({"shadow_only": 5}, "inconsistent"),
        ({"n": 2001}, "inconsistent"),
        ({"decision": "maybe"}, "maybe"),
        ({"champion_loss_sum": "1.0"}, "champion_loss_sum"),
        ({"shadow_loss_sum": -1.0}, "shadow_loss_sum"),
        ({"shadow_loss_sum": 481.0}, "shadow_loss_sum"),
        ({"log_wealth_better": [0.0] * 15}, "log_wealth_better"),
        ({"log_wealth_worse": [float("inf")] * 16}, "log_wealth_worse"),
        ({"log_wealth_worse": [1e3] * 16}, "log_wealth_worse"),
        ({"log_wealth_better": KeyError}, "log_wealth_better"),
    ],
)
def test_a_corrupt_state_is_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    """Every malformed, inconsistent or impossible field raises ValueError naming it."""
    with pytest.raises(ValueError, match=field):
        PairedLossTest.from_dict(corrupt(**changes))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_error_is_refused_naming_the_argument(bad: float) -> None:
    test = PairedLossTest(CONFIG, 1.0)
    with pytest.raises(ValueError, match="champion_error"):
        test.update(bad, 0.0, True, True)
    with pytest.raises(ValueError, match="shadow_error"):
        test.update(0.0, bad, True, True)
    with pytest.raises(ValueError, match="promote_alpha"):
        test.update(0.0, 0.0, True, True, promote_alpha=1.0)
    assert test.n == 0


@pytest.mark.parametrize("cap", [0.0, -1.0, float("nan"), float("inf"), True])
def test_a_cap_must_be_finite_and_positive(cap: float) -> None:
    with pytest.raises(ValueError, match="cap"):
        PairedLossTest(CONFIG, cap)


def test_huge_errors_cost_at_most_the_cap() -> None:
    """An error of any finite size (even one whose square overflows) costs cap^2."""
    test = PairedLossTest(CONFIG, 2.0)
    test.update(1e200, 3.0, False, False)
    assert test.evidence.champion_loss == test.evidence.shadow_loss == 4.0


def test_loss_cap_is_a_multiple_of_the_larger_known_rmse() -> None:
    """The larger test RMSE sets the cap; unknown, NaN or non-positive RMSEs are skipped."""
    assert loss_cap(0.01, 0.02) == pytest.approx(CAP_RMSE_MULTIPLE * 0.02)
    assert loss_cap(0.03, None) == pytest.approx(CAP_RMSE_MULTIPLE * 0.03)
    moves = np.array([0.01, -0.01, 0.02])
    assert loss_cap(float("nan"), 0.0, moves) == loss_cap(None, None, moves)
    assert loss_cap(None, 0.01, np.array([5.0, -5.0])) == pytest.approx(CAP_RMSE_MULTIPLE * 0.01)


def test_loss_cap_falls_back_to_the_spread_of_realised_returns() -> None:
    """With no RMSE, the sample sd of the finite realised returns stands in."""
    moves = np.array([0.01, -0.02, np.nan, 0.03, 0.0])
    expected = CAP_RMSE_MULTIPLE * float(np.std([0.01, -0.02, 0.03, 0.0], ddof=1))
    assert loss_cap(None, None, moves) == pytest.approx(expected)


@pytest.mark.parametrize(
    "realised", [None, np.empty(0), np.array([0.01]), np.full(10, 0.002), np.full(3, np.nan)]
)
def test_loss_cap_without_a_usable_scale_raises(realised: Floats | None) -> None:
    with pytest.raises(ValueError, match="loss cap"):
        loss_cap(None, float("nan"), realised)
