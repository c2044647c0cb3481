"""The shadow promotion test: config, decisions, restart state, e-BH, error rates."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

from deploy.fdr import ebh
from deploy.sequential import (
    Decision,
    PairedSequentialTest,
    PromotionTestConfig,
)
from deploy.sequential_batch import batch_decisions

Rows = npt.NDArray[np.bool_]


def simulate(
    rng: np.random.Generator,
    trials: int,
    bars: int,
    *,
    champion_acc: float,
    shadow_acc: float,
    discordance: float,
) -> tuple[Rows, Rows]:
    """Paired correctness rows; a bar is discordant with probability ``discordance``."""
    gap = shadow_acc - champion_acc
    p_shadow_only, p_champion_only = (discordance + gap) / 2, (discordance - gap) / 2
    p_both = champion_acc - p_champion_only
    u = rng.random((trials, bars))
    shadow_only = u < p_shadow_only
    champion_only = (u >= p_shadow_only) & (u < discordance)
    both = (u >= discordance) & (u < discordance + p_both)
    return champion_only | both, shadow_only | both


def feed(
    test: PairedSequentialTest, champ: Sequence[bool] | Rows, shadow: Sequence[bool] | Rows
) -> list[Decision]:
    """Update bar by bar; return the decision after every bar."""
    return [test.update(bool(c), bool(s)) for c, s in zip(champ, shadow, strict=True)]


def naive_ever_promotes(champ: Rows, shadow: Rows, config: PromotionTestConfig) -> Rows:
    """One-sided McNemar z-test at 0.05 re-checked after every bar from min_samples on."""
    s = np.cumsum(shadow & ~champ, axis=1)[:, config.min_samples - 1 : config.max_samples]
    f = np.cumsum(champ & ~shadow, axis=1)[:, config.min_samples - 1 : config.max_samples]
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.nan_to_num((s - f) / np.sqrt(s + f), nan=0.0)
    return np.asarray((z > float(stats.norm.ppf(0.95))).any(axis=1), dtype=np.bool_)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 0.0}, r"alpha must be in \(0, 1\), got 0.0"),
        ({"alpha": 1.0}, r"alpha must be in \(0, 1\), got 1.0"),
        ({"alpha": math.nan}, r"alpha must be in \(0, 1\), got nan"),
        ({"min_samples": 0}, r"min_samples must be an integer >= 1, got 0"),
        ({"min_samples": 2.5}, r"min_samples must be an integer >= 1, got 2.5"),
        ({"max_samples": 99}, r"max_samples must be an integer >= min_samples \(100\), got 99"),
        ({"min_effect": -0.01}, r"min_effect must be in \[0, 1\), got -0.01"),
        ({"min_effect": 1.0}, r"min_effect must be in \[0, 1\), got 1.0"),
    ],
)
def test_config_rejects_bad_values_naming_field_and_value(kwargs, message):
    """Each invalid setting raises ValueError naming the field and the bad value."""
    with pytest.raises(ValueError, match=message):
        PromotionTestConfig(**kwargs)


def test_no_decision_before_min_samples_even_on_overwhelming_evidence():
    """A perfect shadow stays CONTINUE until bar min_samples, then promotes at exactly that bar."""
    test = PairedSequentialTest(PromotionTestConfig(min_samples=30, max_samples=100))
    decisions = feed(test, [False] * 40, [True] * 40)
    assert decisions[:29] == [Decision.CONTINUE] * 29
    assert decisions[29] is Decision.PROMOTE
    assert test.evidence.n == 30
    assert test.evidence.e_value_better >= 20


def test_budget_exhausted_rejects_at_max_samples():
    """Concordant bars carry no evidence, so the trial ends with REJECT exactly at max_samples."""
    test = PairedSequentialTest(PromotionTestConfig(min_samples=10, max_samples=50))
    decisions = feed(test, [True, False] * 30, [True, False] * 30)
    assert decisions[:49] == [Decision.CONTINUE] * 49
    assert decisions[49] is Decision.REJECT
    assert test.evidence.n == 50
    assert test.evidence.e_value_better == pytest.approx(1.0)


def test_clearly_better_shadow_is_promoted_early():
    """A shadow right on 4 of 5 discordant bars (+30 points) is promoted within a few hundred."""
    champ, shadow = simulate(
        np.random.default_rng(1), 1, 2000, champion_acc=0.50, shadow_acc=0.80, discordance=0.5
    )
    test = PairedSequentialTest(PromotionTestConfig())
    decisions = feed(test, champ[0], shadow[0])
    assert Decision.PROMOTE in decisions
    assert decisions.index(Decision.PROMOTE) < 300
    evidence = test.evidence
    assert evidence.shadow_accuracy is not None and evidence.champion_accuracy is not None
    assert evidence.shadow_accuracy > evidence.champion_accuracy
    assert evidence.statistic == pytest.approx(math.log10(evidence.e_value_better))


def test_clearly_worse_shadow_is_rejected_early():
    """A much worse shadow is rejected by the 'worse' e-process long before the budget ends."""
    champ, shadow = simulate(
        np.random.default_rng(2), 1, 2000, champion_acc=0.60, shadow_acc=0.40, discordance=0.4
    )
    test = PairedSequentialTest(PromotionTestConfig())
    decisions = feed(test, champ[0], shadow[0])
    assert Decision.REJECT in decisions
    assert decisions.index(Decision.REJECT) < 500
    assert test.evidence.e_value_worse >= 20
    assert test.evidence.e_value_better < 1


def test_decision_is_sticky_and_evidence_frozen():
    """After PROMOTE, contrary bars neither change the decision nor the recorded evidence."""
    test = PairedSequentialTest(PromotionTestConfig(min_samples=20, max_samples=100))
    feed(test, [False] * 20, [True] * 20)
    assert test.decision is Decision.PROMOTE
    before = test.evidence
    assert feed(test, [True] * 50, [False] * 50) == [Decision.PROMOTE] * 50
    assert test.evidence == before


def test_state_round_trip_mid_trial_continues_identically():
    """A trial restored from JSON mid-way makes the same decisions and evidence as the original."""
    champ, shadow = simulate(
        np.random.default_rng(3), 1, 2000, champion_acc=0.50, shadow_acc=0.56, discordance=0.3
    )
    losses = np.random.default_rng(4).uniform(0.5, 0.9, size=(2000, 2))
    config = PromotionTestConfig(alpha=0.1, min_samples=50, max_samples=1500, min_effect=0.01)
    original = PairedSequentialTest(config)
    for i in range(150):
        original.update(bool(champ[0, i]), bool(shadow[0, i]), *losses[i])
    restored = PairedSequentialTest.from_dict(json.loads(json.dumps(original.to_dict())))
    assert restored.config == config
    assert restored.evidence == original.evidence
    for i in range(150, 2000):
        args = (bool(champ[0, i]), bool(shadow[0, i]), *losses[i])
        assert restored.update(*args) is original.update(*args)
    assert restored.evidence == original.evidence
    assert restored.decision is not Decision.CONTINUE


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 99}, "state version must be 1, got 99"),
        ({"shadow_only": 10_000}, "counts are inconsistent"),
        ({"n": -1}, "n must be an integer >= 0, got -1"),
        ({"decision": "maybe"}, "'maybe' is not a valid Decision"),
        ({"config": {"alpha": 2.0}}, r"alpha must be in \(0, 1\), got 2.0"),
    ],
)
def test_from_dict_rejects_corrupt_state(change, message):
    """A tampered or truncated state raises ValueError saying what is wrong."""
    test = PairedSequentialTest(PromotionTestConfig())
    feed(test, [True, False, True], [True, True, False])
    with pytest.raises(ValueError, match=message):
        PairedSequentialTest.from_dict({**test.to_dict(), **change})


def test_from_dict_rejects_missing_key():
    """A state missing a count raises ValueError rather than KeyError."""
    state = PairedSequentialTest(PromotionTestConfig()).to_dict()
    del state["shadow_only"]
    with pytest.raises(ValueError, match="incomplete or malformed"):
        PairedSequentialTest.from_dict(state)


def test_log_loss_means_and_validation():
    """Log losses are averaged over the bars that carry them; a lone or bad value is refused."""
    test = PairedSequentialTest(PromotionTestConfig())
    test.update(True, False, 0.2, 0.9)
    test.update(False, True)
    test.update(True, True, 0.4, 0.5)
    evidence = test.evidence
    assert evidence.champion_log_loss == pytest.approx(0.3)
    assert evidence.shadow_log_loss == pytest.approx(0.7)
    assert (evidence.n, evidence.shadow_only, evidence.champion_only) == (3, 1, 1)
    with pytest.raises(ValueError, match="must be given together"):
        test.update(True, True, 0.3, None)
    with pytest.raises(ValueError, match="shadow_log_loss must be finite and >= 0, got inf"):
        test.update(True, True, 0.3, math.inf)
    assert test.evidence.n == 3
    json.dumps(test.evidence.to_dict(), allow_nan=False)


def test_fresh_trial_evidence_is_neutral():
    """Before any bar, accuracies and log losses are None and both e-values are 1."""
    evidence = PairedSequentialTest(PromotionTestConfig()).evidence
    assert evidence.champion_accuracy is None and evidence.shadow_log_loss is None
    assert evidence.e_value_better == pytest.approx(1.0)
    assert evidence.e_value_worse == pytest.approx(1.0)
    assert evidence.statistic == pytest.approx(0.0, abs=1e-12)


def test_vectorised_twin_matches_class_decision_and_bar():
    """batch_decisions reaches the class's decision at the same bar on mixed H0/H1/worse rows."""
    rng = np.random.default_rng(5)
    config = PromotionTestConfig(min_samples=40, max_samples=600, min_effect=0.01)
    blocks = [
        simulate(rng, 20, 700, champion_acc=a, shadow_acc=b, discordance=d)
        for a, b, d in [(0.5, 0.5, 0.3), (0.5, 0.6, 0.3), (0.55, 0.45, 0.4), (0.5, 0.53, 0.5)]
    ]
    champ = np.vstack([c for c, _ in blocks])
    shadow = np.vstack([s for _, s in blocks])
    outcome = batch_decisions(champ, shadow, config, chunk_cells=50_000)
    seen = set()
    for i in range(len(champ)):
        test = PairedSequentialTest(config)
        feed(test, champ[i], shadow[i])
        assert test.decision is outcome.decision(i), i
        assert test.evidence.n == outcome.decided_at[i], i
        early = outcome.decided_at[i] < config.max_samples
        seen.add((test.decision, bool(early)))
    assert {(Decision.PROMOTE, True), (Decision.REJECT, True), (Decision.REJECT, False)} <= seen


def test_twin_leaves_short_rows_undecided():
    """Rows shorter than max_samples without a crossing stay CONTINUE, like the class would."""
    config = PromotionTestConfig(min_samples=10, max_samples=100)
    outcome = batch_decisions(np.ones((2, 50), bool), np.ones((2, 50), bool), config)
    assert [outcome.decision(i) for i in range(2)] == [Decision.CONTINUE] * 2
    assert outcome.decided_at.tolist() == [0, 0]


def test_false_promotion_rate_stays_under_alpha_while_naive_recheck_does_not():
    """With no signal, promotions checked every bar stay <= alpha; re-checked McNemar's do not."""
    trials, config = 300, PromotionTestConfig()
    champ, shadow = simulate(
        np.random.default_rng(6),
        trials,
        config.max_samples,
        champion_acc=0.5,
        shadow_acc=0.5,
        discordance=0.3,
    )
    # Allowance for Monte-Carlo noise: 99.9% quantile of Binomial(trials, alpha).
    bound = stats.binom.ppf(0.999, trials, config.alpha) / trials
    sequential = batch_decisions(champ, shadow, config).promoted.mean()
    naive = naive_ever_promotes(champ, shadow, config).mean()
    assert sequential <= bound
    assert naive > bound


def test_min_effect_shifts_the_null():
    """A +5-point shadow is mostly promoted at min_effect 0 but rarely at min_effect 0.05."""
    champ, shadow = simulate(
        np.random.default_rng(7), 300, 2000, champion_acc=0.50, shadow_acc=0.55, discordance=0.3
    )
    bound = stats.binom.ppf(0.999, 300, 0.05) / 300
    assert batch_decisions(champ, shadow, PromotionTestConfig()).promoted.mean() >= 0.8
    at_margin = batch_decisions(champ, shadow, PromotionTestConfig(min_effect=0.05))
    assert at_margin.promoted.mean() <= bound


def brute_force_ebh(e_values: Mapping[str, float], alpha: float) -> set[str]:
    """The largest subset S whose every member has e >= K / (alpha |S|), by enumeration."""
    names, total = list(e_values), len(e_values)
    for size in range(total, 0, -1):
        for subset in itertools.combinations(names, size):
            if all(e_values[n] >= total / (alpha * size) for n in subset):
                return set(subset)
    return set()


@pytest.mark.parametrize(
    ("e_values", "alpha", "expected"),
    [
        ({"A": 100.0, "B": 30.0, "C": 5.0, "D": 0.5}, 0.1, {"A", "B"}),
        # Step-up: the top one fails 30 alone, but all three clear 10 together.
        ({"A": 25.0, "B": 19.0, "C": 14.0}, 0.1, {"A", "B", "C"}),
        ({"A": 19.9, "B": 0.0}, 0.05, set()),
        ({"A": 40.0, "B": 0.0}, 0.05, {"A"}),
        ({"A": math.inf, "B": 1.0}, 0.05, {"A"}),
        ({}, 0.05, set()),
    ],
)
def test_ebh_hand_made_cases(e_values, alpha, expected):
    """e-BH selects the k largest with k = max{k: e_(k) >= K/(alpha k)}."""
    assert ebh(e_values, alpha) == expected


def test_ebh_matches_definition_on_random_inputs():
    """On random e-values with ties, e-BH equals the brute-force largest self-consistent set."""
    rng = np.random.default_rng(8)
    for _ in range(200):
        size = int(rng.integers(1, 7))
        values = np.round(rng.choice([0.5, 5.0, 50.0], size=size) * rng.uniform(0.5, 3, size), 0)
        e_values = {f"S{i}": float(v) for i, v in enumerate(values)}
        assert ebh(e_values, 0.1) == brute_force_ebh(e_values, 0.1)


@pytest.mark.parametrize(
    ("e_values", "alpha", "message"),
    [
        ({"A": -1.0}, 0.05, "e-value of 'A' must be >= 0, got -1.0"),
        ({"A": math.nan}, 0.05, "e-value of 'A' must be >= 0, got nan"),
        ({"A": 1.0}, 1.5, r"alpha must be in \(0, 1\), got 1.5"),
    ],
)
def test_ebh_rejects_bad_input(e_values, alpha, message):
    """Negative or NaN e-values and alpha outside (0, 1) raise ValueError naming the value."""
    with pytest.raises(ValueError, match=message):
        ebh(e_values, alpha)
