"""The live path: score champion and shadow on every bar, decide trials, announce decisions.

Wraps deploy.live.LiveScorer with what only the daemon has: the prediction
store, the promotion settings, metrics, the promotions topic and the webhook.
Every registry change the daemon makes goes through here so that the running
trial is handed over correctly (a superseded shadow's partial evidence lands in
the ledger) and every decision is announced exactly once.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from daemon.commands import Command, execute
from daemon.events import BarRecord
from daemon.logs import get_logger
from daemon.metrics import LiveRow, Metrics, TrialRow
from daemon.predictions import PredictionStore
from daemon.settings import Settings
from daemon.store import BarStore
from deploy.alerts import WebhookNotifier
from deploy.events import PROMOTION_TOPIC_KINDS, RegistryEvent
from deploy.live import LiveScorer
from deploy.registry import Registry
from deploy.sequential import PromotionTestConfig
from deploy.trial import StaleDecisionError, TrialDecision

_log = get_logger(component="promotions")
_EVENT_FIELDS = (
    "event",
    "symbol",
    "from_version",
    "to_version",
    "evidence",
    "ts",
    "actor",
    "reason",
)

Publish = Callable[[RegistryEvent], None]


class AnnouncementCursor:
    """Per symbol, the ledger seq up to which decisions were announced (a small JSON file).

    A decision is written to the registry before it is announced; a daemon killed
    between the two would never announce it. At start-up, every promotion-topic
    ledger line above the cursor is announced again, so announcements are
    at-least-once (a kill after publishing but before the cursor moved repeats
    one). Without a cursor file (first start), nothing old is replayed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.fresh = not path.exists()
        self._seqs: dict[str, int] = {} if self.fresh else json.loads(path.read_text())

    def get(self, symbol: str) -> int | None:
        return self._seqs.get(symbol)

    def advance(self, symbol: str, seq: int) -> None:
        with self._lock:
            if seq <= self._seqs.get(symbol, -1):
                return
            self._seqs[symbol] = seq
            tmp = self.path.with_suffix(".tmp")
            with tmp.open("w") as f:
                json.dump(self._seqs, f)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)


def promotion_config(settings: Settings) -> PromotionTestConfig:
    return PromotionTestConfig(
        alpha=settings.promotion_alpha,
        min_samples=settings.promotion_min_samples,
        max_samples=settings.promotion_max_samples,
        min_effect=settings.promotion_min_effect,
    )


class LivePath:
    """Owns live scoring, the prediction log and the webhook for one daemon."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        store: BarStore,
        metrics: Metrics,
        publish: Publish,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self._publish = publish
        self.predictions = PredictionStore(settings.data_dir / "predictions.sqlite")
        self.scorer = LiveScorer(
            registry,
            self.predictions,
            lambda symbol, n: store.load(symbol, last_n=n),
            promotion_config(settings),
        )
        self.notifier = WebhookNotifier(
            settings.webhook_url,
            timeout=settings.webhook_timeout_seconds,
            retries=settings.webhook_retries,
        )
        self.cursor = AnnouncementCursor(settings.data_dir / "announced.json")
        metrics.add_live(self._accuracy_rows, self._trial_rows)
        metrics.add_webhook(
            lambda: {
                "sent": self.notifier.sent,
                "failed": self.notifier.failed,
                "dropped": self.notifier.dropped,
            }
        )

    def close(self) -> None:
        self.notifier.close(5.0)
        self.predictions.close()

    # -- per ingest batch ------------------------------------------------------------------
    def on_batch(self, bars_by_symbol: Mapping[str, Sequence[BarRecord]]) -> dict[str, int]:
        """Score and resolve the batch's bars; apply any decision the trials reached.

        Returns the number of predictions resolved per symbol (for the decay monitor).
        """
        if not bars_by_symbol:
            return {}
        try:
            updates = self.scorer.on_batch(bars_by_symbol)
        except Exception as exc:  # the bars are stored; the next batch catches up from the store
            _log.error("live_batch_failed", error=str(exc), exc_info=True)
            return {}
        for u in updates:
            if u.predictions:
                self.metrics.live_predictions.labels(u.symbol).inc(u.predictions)
            for error in u.errors:
                self.metrics.live_errors.labels(u.symbol).inc()
                _log.warning("live_scoring_problem", symbol=u.symbol, error=error)
            if u.ended is not None:
                _log.info("trial_ended_by_slot_change", symbol=u.symbol, reason=u.ended.reason)
            if u.decision is not None:
                self._apply(u.decision)
        return {u.symbol: u.resolved for u in updates}

    def _apply(self, decision: TrialDecision) -> None:
        try:
            event = self.scorer.apply(decision)
        except StaleDecisionError as exc:
            _log.warning("stale_trial_decision", symbol=decision.symbol, error=str(exc))
            self.scorer.sync(decision.symbol)
            return
        _log.info(
            "trial_decided",
            symbol=decision.symbol,
            decision=decision.decision.value,
            reason=decision.reason,
        )
        self.announce(event)

    # -- registry changes made by the daemon or an operator -------------------------------
    def place(self, symbol: str, version: str, *, reason: str) -> list[RegistryEvent]:
        """Put a new passing version in its slot, handing over the running trial."""
        partial = self.scorer.trial(symbol)
        events = self.registry.place(
            symbol,
            version,
            reason=reason,
            superseded_evidence=partial.evidence_dict() if partial else None,
        )
        self.scorer.sync(symbol)
        for event in events:
            self.announce(event)
        return events

    def command(
        self, command: Command, retrain: Callable[[str, str], bool]
    ) -> RegistryEvent | None:
        """Execute an operator command; registry errors propagate to the caller."""
        partial = self.scorer.trial(command.symbol)
        event = execute(
            self.registry,
            command,
            evidence=partial.evidence_dict() if partial else {},
            retrain=retrain,
        )
        if event is not None:
            self.scorer.sync(command.symbol)
            self.announce(event)
        return event

    def replay_unannounced(self) -> int:
        """Announce ledger decisions a previous run wrote but may not have announced."""
        replayed = 0
        for symbol in self.registry.symbols():
            lines = self.registry.history(symbol)
            last = max((int(line.get("seq", 0)) for line in lines), default=0)
            done = self.cursor.get(symbol)
            if done is None and self.cursor.fresh:
                self.cursor.advance(symbol, last)  # first start: nothing old to replay
                continue
            for line in lines:
                if int(line.get("seq", 0)) > (done or 0) and line["event"] in PROMOTION_TOPIC_KINDS:
                    self._announce_only(_event_of(line))
                    replayed += 1
            self.cursor.advance(symbol, last)
        if replayed:
            _log.warning("decisions_reannounced", count=replayed)
        return replayed

    def announce(self, event: RegistryEvent) -> None:
        """Metrics, promotions topic and webhook for one registry event; then the cursor."""
        self._announce_only(event)
        if event.is_promotion_topic_event:
            lines = self.registry.history(event.symbol)
            self.cursor.advance(event.symbol, max(int(x.get("seq", 0)) for x in lines))

    def _announce_only(self, event: RegistryEvent) -> None:
        counters = {
            "champion_bootstrapped": self.metrics.champion_bootstraps,
            "shadow_placed": self.metrics.shadow_placements,
            "promoted": self.metrics.promotions,
            "rejected": self.metrics.shadow_rejections,
            "rolled_back": self.metrics.rollbacks,
        }
        counter = counters.get(event.event)
        if counter is not None:
            counter.labels(event.symbol).inc()
        if event.is_promotion_topic_event:
            self._publish(event)
            self.notifier.notify(event)

    # -- gauges ----------------------------------------------------------------------------------
    def _accuracy_rows(self) -> Iterable[LiveRow]:
        for st in self.scorer.status():
            yield st.symbol, "champion", st.champion_accuracy
            yield st.symbol, "shadow", st.shadow_accuracy

    def _trial_rows(self) -> Iterable[TrialRow]:
        for st in self.scorer.status():
            if st.trial is not None:
                yield st.symbol, st.statistic, st.trial.evidence.n


def _event_of(line: Mapping[str, Any]) -> RegistryEvent:
    """The RegistryEvent a ledger line records."""
    return RegistryEvent(
        line["event"],
        line["symbol"],
        line.get("from_version"),
        line.get("to_version"),
        line.get("evidence") or {},
        line["ts"],
        line.get("actor", "daemon"),
        line.get("reason", ""),
    )
