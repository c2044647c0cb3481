"""e-LOND on the daemon's live path: real ONNX models, real SQLite, a real registry directory.

A trial that promotes per symbol at 1/alpha goes on under e-LOND until 1/alpha_t; its test
index survives a restart and a takeover; the ledger carries the level it promoted at, and
the fleet's record counts the discovery.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from daemon.live.announce import Announcer
from daemon.live.path import LivePath
from daemon.metrics import Metrics
from daemon.store.bars import BarStore
from daemon.store.predictions import PredictionStore
from deploy.events import RegistryEvent
from deploy.fdr import RHO, ELond, FdrLevel, PerSymbol, PromotionPolicy
from deploy.handoff import restore_checkpoint, take_checkpoint
from deploy.live import LiveScorer
from deploy.live_state import LiveUpdate
from deploy.registry import LocalStorage, Registry, RegistryStorage
from deploy.registry.fleet_fdr import FDR_FILE, FleetFdr
from deploy.sequential import Decision, PromotionTestConfig
from deploy.trial import TrialDecision
from tests.support.helpers import ledger
from tests.support.metadata import write_sample_metadata
from trainers.config import TrainConfig
from trainers.data import Bars, bar_records
from trainers.features import FEATURE_SPEC
from trainers.naive import NaiveModel
from trainers.pipeline import train_symbol
from trainers.synthetic import MarketGenerator, MarketSpec

SYMBOL = "BTCUSDT"
CONFIG = PromotionTestConfig(alpha=0.05, min_samples=100, max_samples=3000)
HORIZON = 50
FIRST_LEVEL = CONFIG.alpha * ((1 - RHO) / HORIZON)  # index 1, no discoveries yet: 0.0009


@dataclass(frozen=True)
class Market:
    train: Bars
    live: Bars
    xgb: Path
    naive: Path


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    """Bars with a planted signal, an XGBoost model that learnt it (the better shadow) and a
    naive model that always says down (the champion)."""
    gen = MarketGenerator(MarketSpec(SYMBOL, 1, signal_strength=1.0))
    train, live = gen.next_bars(3000), gen.next_bars(3000)
    base = tmp_path_factory.mktemp("models")
    config = TrainConfig(trainers=("xgboost",), trainer_params={"xgboost": {"n_estimators": 100}})
    result = train_symbol(SYMBOL, train, config, base / "xgb")
    assert result.passed, result.reason
    naive = base / "naive"
    naive.mkdir()
    NaiveModel(0.45, len(FEATURE_SPEC.names)).export_onnx(naive / "model.onnx")
    write_sample_metadata(naive, symbol=SYMBOL, last_ts=int(train.ts[-1]))
    return Market(train, live, base / "xgb", naive)


class Sink:
    name = "recording"

    def __init__(self) -> None:
        self.events: list[RegistryEvent] = []

    def notify(self, event: RegistryEvent) -> bool:
        self.events.append(event)
        return True

    def deliveries(self) -> dict[str, int]:
        return {"sent": len(self.events)}

    def close(self, timeout: float) -> None:
        pass


class Rig:
    """One daemon's live path (scorer, LivePath with metrics and an announcer) over files of
    its own and the shared registry; ``policy`` builds the promotion policy at each start."""

    def __init__(self, root: Path, registry: Registry, market: Market, policy: str) -> None:
        self.root, self.registry, self.market, self.policy = root, registry, market, policy
        self.sink = Sink()
        self.store = BarStore(root / "bars.sqlite")
        self.log = PredictionStore(root / "predictions.sqlite")
        self.store.upsert(bar_records(SYMBOL, market.train))
        self.start()

    def start(self, storage: RegistryStorage | None = None) -> None:
        policy: PromotionPolicy = PerSymbol()
        if self.policy == "e_lond":
            record = FleetFdr(storage or self.registry.storage, horizon=HORIZON, rho=RHO)
            policy = ELond(record, refresh_seconds=0)
        self.scorer = LiveScorer(
            self.registry,
            self.log,
            lambda s, n: self.store.load(s, last_n=n),
            CONFIG,
            policy=policy,
        )
        self.metrics = Metrics(CollectorRegistry(), version="test")
        announcer = Announcer(self.registry, [self.sink], self.metrics)
        self.live = LivePath(self.scorer, self.registry, announcer, self.metrics)
        self.metrics.add_live(self.live.accuracy_rows, self.live.trial_rows)

    def restart(self) -> None:
        self.store.close()
        self.log.close()
        self.store = BarStore(self.root / "bars.sqlite")
        self.log = PredictionStore(self.root / "predictions.sqlite")
        self.start()

    def push(self, start: int, stop: int, batch: int = 10, *, apply: bool = True) -> list[Any]:
        """Store then score live bars [start, stop); through LivePath (decisions applied and
        announced) or, with ``apply=False``, through the scorer alone."""
        out: list[LiveUpdate] = []
        for lo in range(start, stop, batch):
            chunk = bar_records(SYMBOL, _slice(self.market.live, lo, min(lo + batch, stop)))
            self.store.upsert(chunk)
            if apply:
                out.extend(self.live.on_batch({SYMBOL: chunk}))
            else:
                out.append(self.scorer.on_bars(SYMBOL, chunk))
        return out

    def trial(self) -> TrialDecision:
        trial = self.scorer.trial(SYMBOL)
        assert trial is not None
        return trial

    def gauge(self, name: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"symbol": SYMBOL})

    def close(self) -> None:
        self.store.close()
        self.log.close()


def _slice(bars: Bars, start: int, stop: int) -> Bars:
    s = slice(start, stop)
    return Bars(bars.ts[s], bars.open[s], bars.high[s], bars.low[s], bars.close[s], bars.volume[s])


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


@pytest.fixture
def pair(registry: Registry, market: Market) -> tuple[str, str]:
    champion = registry.add_version(SYMBOL, market.naive)
    registry.place(SYMBOL, champion)
    shadow = registry.add_version(SYMBOL, market.xgb)
    registry.place(SYMBOL, shadow)
    return champion, shadow


@pytest.fixture
def rigs(tmp_path: Path, registry: Registry, market: Market) -> Iterator[dict[str, Rig]]:
    made = {p: Rig(tmp_path / p, registry, market, p) for p in ("per_symbol", "e_lond")}
    yield made
    for rig in made.values():
        rig.close()


def _record(registry: Registry) -> FleetFdr:
    return FleetFdr(registry.storage, horizon=HORIZON, rho=RHO)


def _decide(rig: Rig, start: int, *, apply: bool = True) -> tuple[TrialDecision, int]:
    for lo in range(start, len(rig.market.live), 10):
        for u in rig.push(lo, lo + 10, apply=apply):
            if u.decision is not None:
                return u.decision, lo + 10
    raise AssertionError(f"no decision: {rig.scorer.trial(SYMBOL)}")


def test_a_trial_that_promotes_per_symbol_goes_on_under_e_lond_to_its_level(
    rigs: dict[str, Rig], registry: Registry, pair: tuple[str, str]
) -> None:
    """The same bars: per symbol the shadow is promoted once its e-value reaches 1/alpha = 20.
    Under e-LOND the trial holds index 1 of a fresh fleet, so at that very evidence it goes
    on, and it is promoted only at 1/alpha_t = 1/(0.05 x 0.9/50) ~ 1,111; the ledger's
    evidence names the policy, the index, gamma_t, D and alpha_t; the fleet counts it."""
    champion, shadow = pair
    per_symbol, used = _decide(rigs["per_symbol"], 0, apply=False)
    assert per_symbol.decision is Decision.PROMOTE
    assert 1 / CONFIG.alpha <= per_symbol.evidence.e_value_better < 1 / FIRST_LEVEL

    e_lond = rigs["e_lond"]
    e_lond.push(0, used - 10)
    n, bar = per_symbol.evidence.n, used - 10
    while e_lond.trial().evidence.n < n:
        e_lond.push(bar, bar + 1, batch=1)
        bar += 1
    held = e_lond.trial()
    assert held.evidence == per_symbol.evidence  # the evidence that promoted per symbol ...
    assert held.decision is Decision.CONTINUE  # ... is not enough at index 1
    assert held.level is not None and (held.level.index, held.level.discoveries) == (1, 0)
    assert held.level.alpha == pytest.approx(FIRST_LEVEL)
    assert e_lond.gauge("ctd_promotion_level") == pytest.approx(-math.log10(FIRST_LEVEL))
    statistic = e_lond.gauge("ctd_promotion_test_statistic")
    assert statistic is not None and statistic >= math.log10(1 / CONFIG.alpha)

    decision, _ = _decide(e_lond, bar)
    assert decision.decision is Decision.PROMOTE
    assert decision.evidence.n > n
    assert decision.evidence.e_value_better >= 1 / FIRST_LEVEL
    assert registry.slots(SYMBOL).champion == shadow  # applied by the live path
    (line,) = [e for e in ledger(registry, SYMBOL) if e["event"] == "promoted"]
    assert (line["from_version"], line["to_version"]) == (champion, shadow)
    evidence = line["evidence"]
    assert {k: evidence[k] for k in ("promotion_policy", "fdr_index", "fdr_discoveries")} == {
        "promotion_policy": "e_lond",
        "fdr_index": 1,
        "fdr_discoveries": 0,
    }
    assert evidence["fdr_gamma"] == pytest.approx((1 - RHO) / HORIZON)
    assert evidence["promote_alpha"] == pytest.approx(FIRST_LEVEL)
    assert evidence["alpha"] == CONFIG.alpha  # early REJECT's level, unchanged
    assert "e-LOND test 1, 0 fleet discoveries" in line["reason"]
    assert _record(registry).read().discoveries == (1,)
    assert e_lond.scorer.policy.discoveries == 1  # type: ignore[attr-defined]
    assert [e.event for e in e_lond.sink.events] == ["promoted"]
    assert per_symbol.evidence_dict()["promotion_policy"] == "per_symbol"


def test_the_level_falls_as_the_fleet_records_discoveries(
    rigs: dict[str, Rig], registry: Registry, pair: tuple[str, str]
) -> None:
    """Nine promotions recorded by other machines mid-trial: from the next batch on the trial
    tests PROMOTE at 10 x its first level, and promotes there, sooner than with none."""
    e_lond = rigs["e_lond"]
    e_lond.push(0, 60)
    assert e_lond.trial().level == FdrLevel(1, (1 - RHO) / HORIZON, 0, FIRST_LEVEL)
    other = _record(registry)
    found = [other.claim()[0] for _ in range(9)]
    other.discover(found)
    e_lond.push(60, 70)
    level = e_lond.trial().level
    assert level is not None and (level.index, level.discoveries) == (1, 9)
    assert level.alpha == pytest.approx(10 * FIRST_LEVEL)
    assert e_lond.gauge("ctd_promotion_level") == pytest.approx(-math.log10(10 * FIRST_LEVEL))
    decision, _ = _decide(e_lond, 70)
    assert decision.decision is Decision.PROMOTE and decision.level == level
    assert 1 / level.alpha <= decision.evidence.e_value_better < 1 / FIRST_LEVEL
    assert _record(registry).read().discoveries == (1, *found)


def test_the_index_survives_a_restart_and_a_takeover_by_another_daemon(
    tmp_path: Path, rigs: dict[str, Rig], registry: Registry, market: Market, pair: tuple[str, str]
) -> None:
    """Claimed in the trial's first batch and kept with its state: after a restart, and on
    the daemon that restores the trial's checkpoint, the trial goes on with index 1 and no
    index is claimed again."""
    e_lond = rigs["e_lond"]
    e_lond.push(0, 40)
    assert _record(registry).read().next_index == 2
    e_lond.restart()
    restored = e_lond.trial().level
    assert restored is not None and restored.index == 1
    e_lond.push(40, 60)
    checkpoint = take_checkpoint(e_lond.log, SYMBOL)
    assert checkpoint is not None and checkpoint.state.level is not None
    saved = json.loads(json.dumps(checkpoint.to_dict()))
    assert saved["state"]["level"]["index"] == 1

    other = Rig(tmp_path / "other", registry, market, "e_lond")
    other.store.upsert(bar_records(SYMBOL, _slice(market.live, 0, 60)))  # rebuilt from Kafka
    assert restore_checkpoint(other.log, SYMBOL, checkpoint)
    other.restart()
    other.push(60, 80)
    taken = other.trial()
    assert taken.level is not None and taken.level.index == 1
    assert taken.evidence.n == e_lond.trial().evidence.n + 20
    assert _record(registry).read().next_index == 2  # nothing claimed again
    other.close()


def test_a_trial_saved_per_symbol_starts_over_with_an_index_under_e_lond(
    rigs: dict[str, Rig], registry: Registry, pair: tuple[str, str]
) -> None:
    """Evidence gathered before a trial had an index cannot count towards an e-LOND
    promotion: switched from per_symbol, the running trial starts over, with index 1."""
    rig = rigs["per_symbol"]
    rig.push(0, 60)
    assert rig.trial().evidence.n == 59 and rig.trial().level is None
    assert not (rig.root.parent / "registry" / FDR_FILE).exists()
    rig.policy = "e_lond"
    rig.restart()
    (update,) = rig.push(60, 70)
    assert update.errors == ()
    trial = rig.trial()
    assert trial.level is not None and trial.level.index == 1
    assert trial.evidence.n == 10  # bar 59's pair and the 9 before bar 69's label
    assert trial.first_bar_ts == int(rig.market.live.ts[59])


class Unreachable:
    """The registry storage as one daemon sees it during an outage of writes to fdr.json."""

    def __init__(self, storage: RegistryStorage) -> None:
        self._storage, self.down = storage, True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        if self.down and key == FDR_FILE:
            raise OSError("injected: object store unreachable")
        return self._storage.put_if(key, data, tag)


def test_until_an_index_is_claimed_the_trial_counts_no_bars_and_says_why(
    rigs: dict[str, Rig], registry: Registry, pair: tuple[str, str]
) -> None:
    """No index, no counted bars (skipping them is decided before their outcomes are known):
    the update reports why, scoring goes on, and the trial counts from the batch that got
    its index."""
    rig = rigs["e_lond"]
    storage = Unreachable(LocalStorage(rig.root.parent / "registry"))
    rig.start(storage)
    updates = rig.push(0, 30)
    assert all(len(u.predictions) == 20 for u in updates)
    assert all(
        any("no e-LOND test index yet" in e and "unreachable" in e for e in u.errors)
        for u in updates
    )
    assert rig.trial().evidence.n == 0 and rig.trial().level is None
    storage.down = False
    (update,) = rig.push(30, 40)
    assert update.errors == ()
    assert rig.trial().level is not None and rig.trial().evidence.n == 10
