# Over 400 lines: 20 tests sharing one rig (store, log, scorer over real ONNX models).
"""Live scoring and shadow trials: real ONNX models, real SQLite, real registry."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from daemon.store.predictions import PredictionStore
from deploy.live import LiveScorer
from deploy.registry import Registry
from deploy.scoring import feature_tail
from deploy.sequential import Decision, PairedSequentialTest, PromotionTestConfig
from deploy.trial import StaleDecisionError, TrialDecision, apply_decision
from tests.support.helpers import ledger
from tests.support.live_rig import Rig, bar_concat, bar_slice
from tests.support.metadata import write_sample_metadata
from trainers.config import TrainConfig
from trainers.data import BarRecord, Bars, bar_records
from trainers.features import FEATURE_SPEC, compute_features, compute_labels
from trainers.metadata import ModelMetadata
from trainers.naive import NaiveModel
from trainers.onnx_io import OnnxScorer
from trainers.pipeline import train_symbol
from trainers.synthetic import MarketGenerator, MarketSpec

SYMBOL = "BTCUSDT"
TRAIN_BARS = 3000
LIVE_BARS = 3000
CONFIG = PromotionTestConfig(alpha=0.05, min_samples=100, max_samples=3000)
N_FEATURES = len(FEATURE_SPEC.names)


@dataclass(frozen=True)
class Market:
    train: Bars
    live: Bars
    xgb: Path  # staging dirs: model.onnx + metadata.json
    naive: Path
    seq: Path


def _sequence_model(path: Path, window: int, seed: int) -> None:
    """A real [N, window, F] ONNX model whose output depends on every row of its window."""
    w = np.random.default_rng(seed).normal(0, 0.3, (window * N_FEATURES, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p"]),
        helper.make_node("Sub", ["one", "p"], ["q"]),
        helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "seq",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", window, N_FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])],
        initializer=[
            helper.make_tensor("w", TensorProto.FLOAT, list(w.shape), w.ravel().tolist()),
            helper.make_tensor("one", TensorProto.FLOAT, [1, 1], [1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Market:
    """Bars with a planted signal, an XGBoost model that learnt it, and a naive baseline."""
    gen = MarketGenerator(MarketSpec(SYMBOL, 1, signal_strength=1.0))
    train, live = gen.next_bars(TRAIN_BARS), gen.next_bars(LIVE_BARS)
    base = tmp_path_factory.mktemp("models")
    result = train_symbol(
        SYMBOL,
        train,
        TrainConfig(trainers=("xgboost",), trainer_params={"xgboost": {"n_estimators": 100}}),
        base / "xgb",
    )
    assert result.passed, result.reason
    naive = base / "naive"
    naive.mkdir()
    NaiveModel(0.45, N_FEATURES).export_onnx(naive / "model.onnx")  # always "down"
    write_sample_metadata(naive, symbol=SYMBOL, last_ts=int(train.ts[-1]))
    seq = base / "seq"
    seq.mkdir()
    _sequence_model(seq / "model.onnx", window=4, seed=5)
    write_sample_metadata(seq, symbol=SYMBOL, trainer="seq", last_ts=int(train.ts[-1]), window=4)
    return Market(train, live, base / "xgb", naive, seq)


def records(bars: Bars) -> list[BarRecord]:
    return bar_records(SYMBOL, bars)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def make_rig(root: Path, registry: Registry, market: Market) -> Rig:
    return Rig(root, registry, SYMBOL, train=market.train, live=market.live, config=CONFIG)


@pytest.fixture
def rig(tmp_path: Path, registry: Registry, market: Market) -> Iterator[Rig]:
    r = make_rig(tmp_path / "data", registry, market)
    yield r
    r.close()


def slot_pair(registry: Registry, champion: Path, shadow: Path | None) -> tuple[str, str | None]:
    c = registry.add_version(SYMBOL, champion)
    registry.place(SYMBOL, c)
    if shadow is None:
        return c, None
    s = registry.add_version(SYMBOL, shadow)
    registry.place(SYMBOL, s)
    return c, s


def run_to_decision(rig: Rig, limit: int = LIVE_BARS) -> tuple[TrialDecision, int]:
    for lo in range(0, limit, 10):
        (update,) = rig.push(lo, lo + 10)
        if update.decision is not None:
            return update.decision, lo + 10
    raise AssertionError(f"no decision within {limit} bars: {rig.scorer.trial(SYMBOL)}")


def all_bars(market: Market, live_until: int) -> Bars:
    return bar_concat(market.train, bar_slice(market.live, 0, live_until))


# --- features ---------------------------------------------------------------------------------


def test_feature_tail_equals_full_history_features(market: Market) -> None:
    """The live feature rows of the newest bars equal compute_features on the full history."""
    bars = all_bars(market, 300)
    full = compute_features(bars)
    for m in (1, 4, 37):
        assert np.array_equal(feature_tail(bars, m), full[-m:])


def test_feature_tail_pads_short_history_with_nan(market: Market) -> None:
    """With fewer bars than the lookback, the missing rows are NaN and the shape is kept."""
    short = bar_slice(market.train, 0, 10)
    rows = feature_tail(short, 12)
    assert rows.shape == (12, N_FEATURES)
    assert np.isnan(rows).all()


def test_live_probabilities_equal_training_feature_rows(
    rig: Rig, registry: Registry, market: Market
) -> None:
    """Each logged P(up) is the model's score of the training feature row of that bar."""
    champion, _ = slot_pair(registry, market.xgb, None)
    for lo, hi in ((0, 1), (1, 8), (8, 11), (11, 60)):
        rig.push(lo, hi, batch=hi - lo)
    bars = all_bars(market, 60)
    expected = OnnxScorer(registry.model_path(SYMBOL, champion)).predict_proba(
        compute_features(bars)[-60:]
    )
    logged = rig.predictions()
    assert [r[0] for r in logged] == [int(t) for t in market.live.ts[:60]]
    assert all(r[1] == "champion" and r[2] == champion for r in logged)
    assert np.array_equal([r[3] for r in logged], expected)


def test_sequence_model_gets_its_window_of_feature_rows(
    rig: Rig, registry: Registry, market: Market
) -> None:
    """A window-4 model is scored on the 4 training feature rows ending at each bar."""
    champion, _ = slot_pair(registry, market.seq, None)
    rig.push(0, 30, batch=7)
    feats = compute_features(all_bars(market, 30))
    windows = np.stack([feats[i - 3 : i + 1] for i in range(len(feats) - 30, len(feats))])
    expected = OnnxScorer(registry.model_path(SYMBOL, champion)).predict_proba(windows)
    assert np.array_equal([r[3] for r in rig.predictions()], expected)


def test_late_bar_inside_the_window_is_used_for_later_features(
    rig: Rig, registry: Registry, market: Market
) -> None:
    """A bar that arrives late (older than the newest) re-warms the buffer from the store, so
    later feature rows still equal training's on the stored history."""
    slot_pair(registry, market.xgb, None)
    late = records(bar_slice(market.live, 20, 21))
    rig.push(0, 20)
    for i in range(21, 40):
        chunk = records(bar_slice(market.live, i, i + 1))
        rig.store.upsert(chunk)
        rig.scorer.on_bars(SYMBOL, chunk)
    rig.store.upsert(late)
    assert rig.scorer.on_bars(SYMBOL, late).ignored == 1
    rig.push(40, 50)
    stored = rig.store.load(SYMBOL)
    scorer = OnnxScorer(registry.model_path(SYMBOL, registry.slots(SYMBOL).champion or ""))
    expected = scorer.predict_proba(compute_features(stored)[-10:])
    assert np.array_equal([r[3] for r in rig.predictions()[-10:]], expected)


# --- the prediction log -------------------------------------------------------------------------


def test_predictions_are_resolved_with_the_next_bar_direction(
    rig: Rig, registry: Registry, market: Market
) -> None:
    """Both slots are logged per bar; each label is compute_labels' for that bar; the newest
    bar stays unresolved; rolling live accuracy matches the log."""
    champion, shadow = slot_pair(registry, market.naive, market.xgb)
    rig.push(0, 40, batch=6)
    labels = compute_labels(all_bars(market, 40))[-40:]
    rows = rig.predictions()
    assert len(rows) == 80
    for i, ts in enumerate(market.live.ts[:40]):
        pair = [r for r in rows if r[0] == int(ts)]
        assert [(r[1], r[2]) for r in pair] == [("champion", champion), ("shadow", shadow)]
        want = None if i == 39 else int(labels[i])
        assert [r[4] for r in pair] == [want, want]
    (status,) = rig.scorer.status()
    for slot, acc in (("champion", status.champion_accuracy), ("shadow", status.shadow_accuracy)):
        done = [r for r in rows if r[1] == slot and r[4] is not None]
        assert acc == pytest.approx(np.mean([(r[3] >= 0.5) == (r[4] == 1) for r in done]))
    trial = rig.scorer.trial(SYMBOL)
    assert trial is not None and trial.evidence.n == 39


def test_redelivered_bars_are_ignored(rig: Rig, registry: Registry, market: Market) -> None:
    """Bars at or before the newest processed one change nothing, however often they come."""
    slot_pair(registry, market.naive, market.xgb)
    rig.push(0, 30)
    before_rows, before_trial = rig.predictions(), rig.scorer.trial(SYMBOL)
    again = records(bar_slice(market.live, 0, 30))
    update = rig.scorer.on_bars(SYMBOL, again)
    assert (update.scored, update.ignored, update.predictions, update.resolved) == (0, 30, (), 0)
    assert rig.scorer.on_bars(SYMBOL, again[5:9]).ignored == 4
    assert rig.predictions() == before_rows
    assert rig.scorer.trial(SYMBOL) == before_trial


# --- decisions --------------------------------------------------------------------------------


def test_better_shadow_is_promoted_and_the_ledger_holds_the_evidence(
    rig: Rig, registry: Registry, market: Market
) -> None:
    """XGBoost on planted-signal bars beats the naive champion: PROMOTE within the budget;
    applying it swaps the slots and writes the evidence to history."""
    champion, shadow = slot_pair(registry, market.naive, market.xgb)
    decision, used = run_to_decision(rig)
    assert decision.decision is Decision.PROMOTE
    assert (decision.champion_version, decision.shadow_version) == (champion, shadow)
    ev = decision.evidence
    assert CONFIG.min_samples <= ev.n < used
    assert ev.e_value_better >= 1 / CONFIG.alpha
    assert ev.shadow_accuracy is not None and ev.champion_accuracy is not None
    assert ev.shadow_accuracy > ev.champion_accuracy

    (status,) = rig.scorer.status()
    assert status.statistic == ev.statistic > 0

    event = rig.scorer.apply(decision)
    assert (event.event, event.from_version, event.to_version) == ("promoted", champion, shadow)
    slots = registry.slots(SYMBOL)
    assert (slots.champion, slots.shadow, slots.retired) == (shadow, None, (champion,))
    line = ledger(registry, SYMBOL)[-1]
    assert line["event"] == "promoted"
    for key in ("statistic", "n", "champion_accuracy", "shadow_accuracy", "e_value_better"):
        assert line["evidence"][key] == getattr(ev, key)
    assert line["evidence"]["p_value"] == pytest.approx(1 / ev.e_value_better)
    assert line["evidence"]["alpha"] == CONFIG.alpha
    assert rig.scorer.trial(SYMBOL) is None
    later = rig.push(used, used + 20)
    assert all(u.decision is None for u in later)
    assert {r[2] for r in rig.predictions()[-20:]} == {shadow}


def test_worse_shadow_is_rejected(rig: Rig, registry: Registry, market: Market) -> None:
    """A naive shadow against the XGBoost champion is rejected as significantly worse."""
    champion, shadow = slot_pair(registry, market.xgb, market.naive)
    decision, _ = run_to_decision(rig)
    assert decision.decision is Decision.REJECT
    assert decision.evidence.e_value_worse >= 1 / CONFIG.alpha
    assert decision.reason.startswith("shadow worse")
    event = apply_decision(registry, decision)
    assert (event.event, event.from_version, event.to_version) == ("rejected", champion, shadow)
    assert registry.slots(SYMBOL).shadow is None
    assert ledger(registry, SYMBOL)[-1]["evidence"]["decision"] == "reject"


def test_stale_decision_is_refused(registry: Registry, market: Market) -> None:
    """A decision about a shadow that has since been replaced changes nothing."""
    champion, old = slot_pair(registry, market.naive, market.xgb)
    new = registry.add_version(SYMBOL, market.xgb)
    registry.place(SYMBOL, new)
    test = PairedSequentialTest(CONFIG)
    decision = TrialDecision(SYMBOL, Decision.PROMOTE, champion, old or "", test.evidence, CONFIG)
    with pytest.raises(StaleDecisionError, match=old or ""):
        apply_decision(registry, decision)
    assert registry.slots(SYMBOL).champion == champion
    assert ledger(registry, SYMBOL)[-1]["event"] == "shadow_placed"


def test_trial_counts_only_bars_after_the_training_data(
    rig: Rig, registry: Registry, market: Market, tmp_path: Path
) -> None:
    """Bars the shadow was trained on are scored and logged but never enter the trial."""
    staging = tmp_path / "in-sample"
    shutil.copytree(market.xgb, staging)
    meta = json.loads((staging / "metadata.json").read_text())
    meta["data"]["last_ts"] = int(market.live.ts[25])
    (staging / "metadata.json").write_text(json.dumps(meta))
    slot_pair(registry, market.naive, staging)
    rig.push(0, 40)
    trial = rig.scorer.trial(SYMBOL)
    assert trial is not None
    assert trial.evidence.n == 40 - 1 - 26
    assert trial.first_bar_ts == int(market.live.ts[26])
    assert len(rig.predictions()) == 80


# --- restarts and slot changes -----------------------------------------------------------------


def test_restart_mid_trial_keeps_identical_evidence(
    tmp_path: Path, market: Market, registry: Registry
) -> None:
    """Stopping and restarting mid-trial ends with the same evidence, decision and log as
    never stopping."""
    slot_pair(registry, market.naive, market.xgb)
    straight = make_rig(tmp_path / "straight", registry, market)
    straight_updates = straight.push(0, 160)
    restarted = make_rig(tmp_path / "restarted", registry, market)
    restarted.push(0, 60)
    half = restarted.scorer.trial(SYMBOL)
    assert half is not None and half.evidence.n == 59
    restarted.restart()
    assert restarted.scorer.trial(SYMBOL) == half
    restarted_updates = restarted.push(60, 160)
    assert restarted.scorer.trial(SYMBOL) == straight.scorer.trial(SYMBOL)
    assert restarted.predictions() == straight.predictions()
    assert restarted.scorer.status() == straight.scorer.status()
    decided = [u.decision for u in straight_updates if u.decision]
    assert decided == [u.decision for u in restarted_updates if u.decision]
    assert len(decided) == 1
    straight.close()
    restarted.close()


def test_bars_stored_but_not_scored_before_a_crash_are_caught_up(
    tmp_path: Path, market: Market, registry: Registry
) -> None:
    """Bars the store kept but the log never saw (crash between the two commits) are scored
    at restart, so the trial matches an uninterrupted one."""
    slot_pair(registry, market.naive, market.xgb)
    straight = make_rig(tmp_path / "straight", registry, market)
    straight.push(0, 95)
    crashed = make_rig(tmp_path / "crashed", registry, market)
    crashed.push(0, 50)
    crashed.store.upsert(records(bar_slice(market.live, 50, 67)))  # the crash: never scored
    crashed.restart()
    crashed.push(67, 95)
    assert crashed.scorer.trial(SYMBOL) == straight.scorer.trial(SYMBOL)
    assert crashed.predictions() == straight.predictions()
    straight.close()
    crashed.close()


class FailingCommits:
    """The real log, with commits failing while ``failing`` is set (a full disk, say)."""

    def __init__(self, log: PredictionStore) -> None:
        self.log, self.failing = log, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.log, name)

    def commit(self, writes: Any) -> None:
        if self.failing:
            raise OSError(28, "No space left on device")
        self.log.commit(writes)


def test_failed_commit_is_caught_up_from_the_store(
    tmp_path: Path, market: Market, registry: Registry
) -> None:
    """A batch whose log commit fails raises, and the next batch scores its bars too, so
    evidence and log end as if nothing failed."""
    slot_pair(registry, market.naive, market.xgb)
    straight = make_rig(tmp_path / "straight", registry, market)
    straight.push(0, 90)
    flaky = make_rig(tmp_path / "flaky", registry, market)
    log = FailingCommits(flaky.log)
    flaky.scorer = LiveScorer(registry, log, lambda s, n: flaky.store.load(s, last_n=n), CONFIG)
    flaky.push(0, 40)
    log.failing = True
    with pytest.raises(OSError, match="No space"):
        flaky.push(40, 50)
    log.failing = False
    (update,) = flaky.push(50, 90, batch=40)
    assert update.scored == 50
    assert flaky.scorer.trial(SYMBOL) == straight.scorer.trial(SYMBOL)
    assert flaky.predictions() == straight.predictions()
    straight.close()
    flaky.close()


def test_one_bad_symbol_does_not_stop_the_batch(
    rig: Rig, registry: Registry, market: Market
) -> None:
    """A symbol that fails (here: not a valid symbol) is reported; the others are scored."""
    slot_pair(registry, market.naive, None)
    chunk = records(bar_slice(market.live, 0, 5))
    rig.store.upsert(chunk)
    bad, good = rig.scorer.on_batch({"bad/symbol": chunk, SYMBOL: chunk})
    assert bad.scored == 0 and "bad/symbol" in bad.errors[0]
    assert (good.symbol, good.scored, len(good.predictions), good.errors) == (SYMBOL, 5, 5, ())


def test_decision_not_applied_before_a_restart_is_announced_again(
    rig: Rig, registry: Registry, market: Market
) -> None:
    """A PROMOTE reached but not applied is returned again by the first call after restart."""
    slot_pair(registry, market.naive, market.xgb)
    decision, used = run_to_decision(rig)
    assert rig.push(used, used + 10)[0].decision is None  # announced once per process
    rig.restart()
    again = rig.push(used + 10, used + 20)[0].decision
    assert again is not None
    assert again.evidence == decision.evidence
    assert again.decision is Decision.PROMOTE


def test_superseded_shadow_hands_back_its_partial_evidence(
    rig: Rig, registry: Registry, market: Market
) -> None:
    """Replacing the shadow ends its trial with the evidence so far; the new one starts at 0."""
    champion, old = slot_pair(registry, market.naive, market.xgb)
    rig.push(0, 60)
    partial = rig.scorer.trial(SYMBOL)
    assert partial is not None and partial.evidence.n == 59
    new = registry.add_version(SYMBOL, market.xgb)
    events = registry.place(SYMBOL, new)
    assert [e.event for e in events] == ["shadow_superseded", "shadow_placed"]
    ended = rig.scorer.sync(SYMBOL)
    assert ended == partial
    assert ended is not None and ended.decision is Decision.CONTINUE
    assert (ended.champion_version, ended.shadow_version) == (champion, old)
    fresh = rig.scorer.trial(SYMBOL)
    assert fresh is not None
    assert (fresh.champion_version, fresh.shadow_version, fresh.evidence.n) == (champion, new, 0)
    rig.push(60, 70)
    fresh = rig.scorer.trial(SYMBOL)
    # Bar 59's shadow prediction came from the old version, so the pair starts at bar 60.
    assert fresh is not None and fresh.evidence.n == 9


def test_slot_change_while_down_is_reported_at_restart(
    rig: Rig, registry: Registry, market: Market
) -> None:
    """A shadow replaced while the scorer was down comes back as an ended trial on restart."""
    slot_pair(registry, market.naive, market.xgb)
    rig.push(0, 50)
    partial = rig.scorer.trial(SYMBOL)
    rig.restart()
    registry.place(SYMBOL, registry.add_version(SYMBOL, market.xgb))
    (update,) = rig.push(50, 60)
    assert update.ended == partial


def test_broken_shadow_does_not_stop_the_champion(
    rig: Rig, registry: Registry, market: Market, tmp_path: Path
) -> None:
    """A shadow whose ONNX file cannot load is reported once; the champion is still scored."""
    staging = tmp_path / "broken"
    shutil.copytree(market.xgb, staging)
    broken = b"not an onnx model"
    (staging / "model.onnx").write_bytes(broken)
    meta = ModelMetadata.from_json((staging / "metadata.json").read_bytes(), "metadata.json")
    assert meta.onnx is not None  # the producer recorded the broken file's own hash
    onnx = meta.onnx.model_copy(update={"sha256": hashlib.sha256(broken).hexdigest()})
    (staging / "metadata.json").write_bytes(meta.model_copy(update={"onnx": onnx}).to_json())
    champion, shadow = slot_pair(registry, market.naive, staging)
    updates = rig.push(0, 30)
    assert [u.errors for u in updates if u.errors] == [updates[0].errors]
    assert shadow is not None and shadow in updates[0].errors[0]
    assert {(r[1], r[2]) for r in rig.predictions()} == {("champion", champion)}
    trial = rig.scorer.trial(SYMBOL)
    assert trial is not None and trial.evidence.n == 0


def test_slot_change_by_another_process_is_picked_up(
    rig: Rig, registry: Registry, market: Market
) -> None:
    """An operator's reject written straight to the registry ends the trial at the next batch
    (slots are re-read every slots_poll_seconds), with its partial evidence."""
    rig.scorer = rig._scorer(slots_poll_seconds=0.0)
    champion, _ = slot_pair(registry, market.naive, market.xgb)
    rig.push(0, 30)
    partial = rig.scorer.trial(SYMBOL)
    registry.reject(SYMBOL, evidence={}, actor="operator", reason="looks odd")
    (update,) = rig.push(30, 40)
    assert update.ended == partial
    assert rig.scorer.trial(SYMBOL) is None
    assert {r[2] for r in rig.predictions() if r[0] >= int(market.live.ts[30])} == {champion}
