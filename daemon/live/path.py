"""The live path: score champion and shadow on every bar, decide trials, announce decisions.

Wraps ``deploy.live.LiveScorer`` with what only the daemon has: metrics and the
announcer. Every registry change the daemon makes goes through here so that the
running trial is handed over correctly (a superseded shadow's partial evidence
lands in the ledger) and every decision is announced.

``SavedTrialPlacer`` is the same hand-over for tools that run without the
daemon's memory (``ctd train``): the evidence comes from the prediction log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from daemon.actions import Command, Retrain, TrialSoFar, execute
from daemon.live.announce import Announcer
from daemon.live.publish import PredictionPublisher
from daemon.logs import get_logger
from daemon.metrics import LiveRow, Metrics, TrialRow
from deploy.errors import FencedError
from deploy.events import RegistryEvent
from deploy.live import LiveScorer
from deploy.live_state import LiveUpdate
from deploy.quarantine import STATE_ERRORS
from deploy.registry import Registry
from deploy.trial import PredictionLog, StaleDecisionError, TrialDecision, saved_trial
from trainers.data import BarRecord

_log = get_logger(component="live")


class LivePath:
    """Live scoring, trial decisions and announcements for one daemon."""

    def __init__(
        self,
        scorer: LiveScorer,
        registry: Registry,
        announcer: Announcer,
        metrics: Metrics,
        *,
        publisher: PredictionPublisher | None = None,
    ) -> None:
        self.scorer = scorer
        self.registry = registry
        self.announcer = announcer
        self.metrics = metrics
        self.publisher = publisher
        self._created: dict[tuple[str, str], float] = {}

    def on_batch(
        self, bars_by_symbol: Mapping[str, Sequence[BarRecord]], received_at: float | None = None
    ) -> list[LiveUpdate]:
        """Score and resolve the batch's bars, publish the predictions (after the log commit),
        apply any decision the trials reached. ``received_at``: when the bars' poll returned
        (``time.monotonic()``), for the publish latency."""
        if not bars_by_symbol:
            return []
        try:
            updates = self.scorer.on_batch(bars_by_symbol)
        except Exception as exc:  # the bars are stored; the next batch catches up from the store
            _log.error("live_batch_failed", error=str(exc), exc_info=True)
            return []
        if self.publisher is not None:
            self.publisher.publish(updates, received_at)
        for u in updates:
            if u.predictions:
                self.metrics.live_predictions.labels(u.symbol).inc(len(u.predictions))
            for error in u.errors:
                self.metrics.live_errors.labels(u.symbol).inc()
                _log.warning("live_scoring_problem", symbol=u.symbol, error=error)
            if u.ended is not None:
                _log.info("trial_ended_by_slot_change", symbol=u.symbol, reason=u.ended.reason)
            if u.decision is not None:
                self._apply(u.decision)
        return updates

    def _apply(self, decision: TrialDecision) -> None:
        try:
            event = self.scorer.apply(decision)
        except StaleDecisionError as exc:
            _log.warning("stale_trial_decision", symbol=decision.symbol, error=str(exc))
            self.scorer.sync(decision.symbol)
            return
        except FencedError as exc:  # another daemon owns the symbol now; it decides
            self.metrics.registry_fenced.labels(decision.symbol).inc()
            _log.warning("trial_decision_fenced", symbol=decision.symbol, error=str(exc))
            self.scorer.forget(decision.symbol)
            return
        _log.info(
            "trial_decided",
            symbol=decision.symbol,
            decision=decision.decision.value,
            reason=decision.reason,
        )
        self.announcer.announce([event])

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
        self.announcer.announce(events)
        return events

    def command(self, command: Command, retrain: Retrain) -> RegistryEvent | None:
        """Execute an operator command; its errors (``execute``) propagate to the caller.
        Operators are never fenced: any daemon of a fleet may carry out a command."""
        partial = self.scorer.trial(command.symbol)
        trial = TrialSoFar(
            partial.evidence_dict() if partial else {},
            partial.evidence.n if partial else 0,
            self.scorer.config.min_samples,
        )
        event = execute(self.registry.unfenced(), command, trial=trial, retrain=retrain)
        if event is not None:
            self.scorer.sync(command.symbol)
            self.announcer.announce([event])
        return event

    def slot_ages(self) -> dict[tuple[str, str], float]:
        """Creation time of the model in each slot of the symbols served here (cached per
        version), for ``ctd_model_age_seconds`` at scrape time."""
        out = {}
        for st in self.scorer.status():
            for slot, held in (("champion", st.champion_version), ("shadow", st.shadow_version)):
                if held is None:
                    continue
                if (st.symbol, held) not in self._created:
                    try:
                        meta = self.registry.metadata(st.symbol, held)
                    except STATE_ERRORS as exc:  # one symbol's bad file never fails a scrape
                        self.scorer.quarantine.add(st.symbol, exc)
                        continue
                    self._created[(st.symbol, held)] = meta.created_ts
                out[(st.symbol, slot)] = self._created[(st.symbol, held)]
        return out

    def accuracy_rows(self) -> Iterable[LiveRow]:
        for st in self.scorer.status():
            yield st.symbol, "champion", st.champion_accuracy
            yield st.symbol, "shadow", st.shadow_accuracy

    def trial_rows(self) -> Iterable[TrialRow]:
        for st in self.scorer.status():
            if st.trial is not None:
                yield st.symbol, st.statistic, st.trial.evidence.n, st.promote_level


class SavedTrialPlacer:
    """Places versions without a running scorer; a replaced shadow's evidence is the trial
    as the prediction log last saved it (``deploy.trial.saved_trial``)."""

    def __init__(self, registry: Registry, log: PredictionLog | None, *, actor: str) -> None:
        self.registry = registry
        self.log = log
        self.actor = actor

    def place(self, symbol: str, version: str, *, reason: str) -> list[RegistryEvent]:
        partial = None if self.log is None else saved_trial(self.log, self.registry, symbol)
        return self.registry.place(
            symbol,
            version,
            actor=self.actor,
            reason=reason,
            superseded_evidence=partial.evidence_dict() if partial else None,
        )
