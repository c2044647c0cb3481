"""A bar's path through the daemon, one poll at a time, on one thread.

    poll -> DLQ -> store -> commit          (daemon.kafka.ingest.Ingestor)
         -> live path: score, resolve, trials, decisions   (daemon.live.path)
         -> live monitors: drift, decay, staleness          (daemon.live.watch)
         -> retrain trigger: bar-count policy               (daemon.training.trigger)

A failed poll (store or broker) is retried with backoff (0.5 s doubling to
30 s); nothing of it was committed, so the batch comes again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from daemon.errors import StoreError
from daemon.kafka.ingest import Ingestor, IngestReport
from daemon.kafka.undecodable import UndecodableBatch
from daemon.live.path import LivePath
from daemon.live.watch import LiveWatch
from daemon.logs import get_logger
from daemon.loop import Loop
from daemon.metrics import Metrics
from daemon.training.trigger import RetrainTrigger

_log = get_logger(component="intake")

MAX_BACKOFF_SECONDS: Final = 30.0


class Intake(Loop):
    """The ingest thread: polls until stopped, then leaves the consumer group."""

    thread_name = "ctd-ingest"

    def __init__(
        self,
        ingestor: Ingestor,
        *,
        live: LivePath,
        watch: LiveWatch,
        trigger: RetrainTrigger,
        metrics: Metrics,
        before_poll: Callable[[], None] = lambda: None,
        before_close: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__()
        self._before_poll, self._before_close = before_poll, before_close
        self._ingestor = ingestor
        self._live = live
        self._watch = watch
        self._trigger = trigger
        self._metrics = metrics
        self.store_writable = True
        """False while the last poll failed to write the store (a readiness check)."""

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the current batch (stored batches are committed) and leave the group."""
        if not self.started:
            self._ingestor.close()
        super().stop(timeout)

    def _run(self) -> None:
        try:
            self._poll_until_stopped()
        finally:
            try:
                self._before_close()
            finally:
                self._ingestor.close()

    def _poll_until_stopped(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._before_poll()
                report = self._ingestor.poll_once()
            except StoreError as exc:
                self.store_writable = False
                self._metrics.ingest_errors.labels("store").inc()
                _log.error("ingest_store_error", error=str(exc))
            except Exception as exc:
                self._metrics.ingest_errors.labels("kafka").inc()
                _log.error("ingest_error", error=str(exc), exc_info=True)
            else:
                backoff = 0.5
                self.store_writable = True
                self.after_batch(report)
                continue
            self._stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def after_batch(self, report: IngestReport) -> None:
        """Metrics, live path, live monitors and the retrain trigger for one stored batch."""
        m = self._metrics
        if report.messages:
            m.ingest_messages.inc(report.messages)
        if report.invalid:
            m.dlq_messages.labels("message").inc(report.invalid)
            for reason in report.dlq_reasons[:5]:
                _log.warning("message_dead_lettered", reason=reason)
        if report.undecodable is not None:
            self._undecodable(report.undecodable, skipped=report.undecodable_skipped)
        for rule, n in report.implausible.items():
            m.implausible_bars.labels(rule).inc(n)
        for symbol, records in report.bars_by_symbol.items():
            m.ingest_bars.labels(symbol).inc(len(records))
        for symbol, n in report.corrected.items():
            m.store_corrections.labels(symbol).inc(n)
            _log.info("bars_corrected", symbol=symbol, bars=n)
        if report.valid_bars:
            m.store_transactions.inc()
        if report.max_event_lag_seconds is not None:
            m.ingest_lag.set(report.max_event_lag_seconds)
        grown = {symbol: new for symbol, new in report.new_bars.items() if new > 0}
        if grown:
            m.last_ingest.set(time.time())
        for symbol, new in grown.items():
            m.store_new_bars.labels(symbol).inc(new)
            if self._trigger.count(symbol) == 0:
                m.init_symbol(symbol)
        # Counts first, so a retrain a live monitor requests carries this batch's count.
        self._trigger.add_bars(grown)
        self._watch.on_updates(self._live.on_batch(report.bars_by_symbol, report.received_at))
        self._trigger.request_due(grown, "new_bars")

    def _undecodable(self, batch: UndecodableBatch, *, skipped: bool) -> None:
        tp = batch.partition
        where = {"topic": tp.topic, "partition": tp.partition, "offsets": [batch.first, batch.end]}
        if skipped:
            self._metrics.dlq_messages.labels("undecodable_batch").inc()
            _log.error("undecodable_batch_dead_lettered", reason=batch.reason, **where)
        else:
            self._metrics.ingest_errors.labels("undecodable").inc()
            _log.warning("undecodable_batch_retry", reason=batch.reason, **where)
