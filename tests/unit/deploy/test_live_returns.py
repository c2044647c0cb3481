"""Live scoring of return-target models: real xgboost return models exported to ONNX, real
SQLite, real registry. Predictions resolve ``horizon`` bars later to the realised log return,
the trial tests truncated squared-error differentials, and only models of the live target and
horizon are served."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from daemon.backtest.replay import UNGATED
from deploy.live import LiveScorer
from deploy.registry import Registry
from deploy.sequential import Decision, PromotionTestConfig
from deploy.sequential_loss import PairedLossTest
from deploy.trial import TrialDecision
from tests.support.live_rig import Rig, bar_concat, bar_slice
from trainers.config import TrainConfig
from trainers.data import Bars
from trainers.features import compute_features, forward_returns
from trainers.onnx_io import OnnxScorer
from trainers.pipeline import train_symbol
from trainers.synthetic import planted_return_bars, random_walk_bars

SYMBOL = "SYN"
H = 5
TRAIN_BARS = 3000
LIVE_BARS = 2500
CONFIG = PromotionTestConfig(alpha=0.05, min_samples=100, max_samples=2500)
RETURN_XGB = TrainConfig(
    trainers=("xgboost",),
    trainer_params={"xgboost": {"preset": "tiny"}},
    target="return",
    horizon_bars=H,
    walk_forward_folds=0,
)


@dataclass(frozen=True)
class Models:
    train: Bars
    live: Bars
    skilled: Path  # staging dirs: model.onnx + metadata.json
    noise: Path
    direction: Path
    other_horizon: Path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    bars = planted_return_bars(TRAIN_BARS + LIVE_BARS, horizon=H, strength=0.5, seed=1)
    train, live = bar_slice(bars, 0, TRAIN_BARS), bar_slice(bars, TRAIN_BARS, len(bars))
    base = tmp_path_factory.mktemp("return-models")

    def fit(name: str, on: Bars, config: TrainConfig) -> Path:
        result = train_symbol(SYMBOL, on, config, base / name)
        assert result.passed, result.reason
        return base / name

    # The noise model learns on a random walk that ends where the planted history does, so
    # its trained_until is the same and every live bar counts for the trial; with every gate
    # off (it has no skill), as the backtest's always-swap policy trains.
    walk = random_walk_bars(TRAIN_BARS, seed=3)
    walk = Bars(train.ts, walk.open, walk.high, walk.low, walk.close, walk.volume)
    ungated = replace(RETURN_XGB, gates=UNGATED)
    return Models(
        train,
        live,
        skilled=fit("skilled", train, RETURN_XGB),
        noise=fit("noise", walk, ungated),
        direction=fit("direction", train, replace(ungated, target="direction", horizon_bars=1)),
        other_horizon=fit("other", train, replace(ungated, horizon_bars=3)),
    )


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def make_rig(root: Path, registry: Registry, models: Models, horizon: int = H) -> Rig:
    return Rig(
        root,
        registry,
        SYMBOL,
        train=models.train,
        live=models.live,
        config=CONFIG,
        target="return",
        horizon=horizon,
    )


@pytest.fixture
def rig(tmp_path: Path, registry: Registry, models: Models) -> Iterator[Rig]:
    r = make_rig(tmp_path / "data", registry, models)
    yield r
    r.close()


def place(registry: Registry, *staged: Path) -> list[str]:
    versions = [registry.add_version(SYMBOL, path) for path in staged]
    for version in versions:
        registry.place(SYMBOL, version)
    return versions


def test_predictions_are_the_models_returns_and_resolve_horizon_bars_later(
    rig: Rig, registry: Registry, models: Models
) -> None:
    """Each logged value is the ONNX model's predicted return for the training feature row
    of that bar; each outcome is log(close[t+5] / close[t]); the newest 5 bars still wait."""
    (champion,) = place(registry, models.skilled)
    for lo, hi, batch in ((0, 1, 1), (1, 9, 8), (9, 12, 3), (12, 80, 17)):
        rig.push(lo, hi, batch=batch)
    history = bar_concat(models.train, bar_slice(models.live, 0, 80))
    expected = OnnxScorer(registry.model_path(SYMBOL, champion)).predict(
        compute_features(history)[-80:].astype(np.float32)
    )
    realised = forward_returns(history, H)[-80:]
    logged = rig.predictions()
    assert [row[0] for row in logged] == models.live.ts[:80].tolist()
    assert {row[1:3] for row in logged} == {("champion", champion)}
    assert np.array_equal([row[3] for row in logged], expected)
    outcomes = [row[4] for row in logged]
    assert outcomes[-H:] == [None] * H
    np.testing.assert_allclose(np.asarray(outcomes[:-H], dtype=float), realised[:-H], rtol=1e-12)
    assert any(v < 0 for v in expected) and any(v > 0 for v in expected)


def test_a_restart_inside_the_horizon_resolves_every_waiting_prediction(
    tmp_path: Path, registry: Registry, models: Models
) -> None:
    """Stopped with 5 bars' predictions waiting, the restarted scorer resolves them from the
    log: the log ends exactly as an uninterrupted run's."""
    place(registry, models.skilled, models.noise)
    straight = make_rig(tmp_path / "straight", registry, models)
    straight.push(0, 60, batch=7)
    restarted = make_rig(tmp_path / "restarted", registry, models)
    restarted.push(0, 23, batch=7)
    restarted.restart()
    restarted.push(23, 60, batch=7)
    assert restarted.predictions() == straight.predictions()
    assert restarted.log.load_state(SYMBOL) == straight.log.load_state(SYMBOL)
    straight.close()
    restarted.close()


def run_to_decision(rig: Rig) -> tuple[TrialDecision, int]:
    for lo in range(0, LIVE_BARS, 25):
        for update in rig.push(lo, lo + 25, batch=25):
            assert not update.errors, update.errors
            if update.decision is not None:
                return update.decision, lo + 25
    raise AssertionError("no decision within the live bars")


def test_a_skilled_return_shadow_is_promoted_over_a_noise_champion(
    rig: Rig, registry: Registry, models: Models
) -> None:
    """The trial on truncated squared-error differentials promotes the shadow that learnt the
    planted 5-bar return; the ledger names the test, the cap and both losses."""
    champion, shadow = place(registry, models.noise, models.skilled)
    decision, bars = run_to_decision(rig)
    assert decision.decision is Decision.PROMOTE, decision.reason
    ev = decision.evidence
    assert ev.loss == "squared_error"
    assert ev.shadow_loss is not None and ev.champion_loss is not None
    assert ev.shadow_loss < ev.champion_loss
    assert ev.n >= CONFIG.min_samples and bars <= LIVE_BARS
    assert "truncated MSE" in decision.reason
    doc = decision.evidence_dict()
    assert "truncated squared-error" in doc["test"]
    rig.scorer.apply(decision)
    assert registry.slots(SYMBOL).champion == shadow
    assert registry.history(SYMBOL)[-1].evidence["loss"] == "squared_error"
    assert champion != shadow


def test_a_noise_shadow_is_rejected_against_a_skilled_champion(
    rig: Rig, registry: Registry, models: Models
) -> None:
    place(registry, models.skilled, models.noise)
    decision, _ = run_to_decision(rig)
    assert decision.decision is Decision.REJECT, decision.reason
    assert decision.evidence.shadow_loss is not None and decision.evidence.champion_loss is not None
    assert decision.evidence.shadow_loss > decision.evidence.champion_loss


@pytest.mark.parametrize("other", ["direction", "other_horizon"])
def test_models_of_another_target_or_horizon_are_not_served(
    rig: Rig, registry: Registry, models: Models, other: str
) -> None:
    """A direction model, or a return model over 3 bars, in a daemon serving 5-bar returns:
    its slot goes unscored and the error names the settings, once."""
    (version,) = place(registry, getattr(models, other))
    first, second = rig.push(0, 20, batch=10)
    assert len(first.errors) == 1
    assert "CTD_TARGET, CTD_HORIZON_BARS" in first.errors[0] and version in first.errors[0]
    assert second.errors == () and rig.predictions() == []


def test_a_direction_scorer_keeps_its_labels_and_accuracy_test(
    tmp_path: Path, registry: Registry, models: Models
) -> None:
    """Horizon 1, direction: labels are 0/1 and the trial is the accuracy test, as before."""
    place(registry, models.direction, models.direction)
    rig = Rig(
        tmp_path / "direction",
        registry,
        SYMBOL,
        train=models.train,
        live=models.live,
        config=CONFIG,
    )
    rig.push(0, 30)
    outcomes = {row[4] for row in rig.predictions() if row[4] is not None}
    assert outcomes <= {0.0, 1.0} and len(outcomes) == 2
    trial = rig.scorer.trial(SYMBOL)
    assert trial is not None and trial.evidence.loss == "log_loss"
    rig.close()


def test_horizon_must_be_positive(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="horizon"):
        LiveScorer(registry, None, lambda s, n: None, CONFIG, horizon=0)  # type: ignore[arg-type]


def test_a_shallow_copy_of_a_loss_test_is_independent() -> None:
    """The live path feeds a batch to ``copy.copy`` of the trial's test and keeps the
    original when the log's commit fails: updating the copy must not touch it."""
    test = PairedLossTest(CONFIG, cap=0.05)
    for i in range(20):
        test.update(0.01 * (i % 3), 0.002, i % 2 == 0, True)
    before = test.to_dict()
    twin = copy.copy(test)
    for _ in range(30):
        twin.update(0.04, 0.0, False, True)
    assert test.to_dict() == before
    assert twin.evidence.e_value_better > test.evidence.e_value_better
