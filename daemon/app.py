"""The one place that wires ctd together: store, Kafka, ingest, retraining, registry, HTTP.

Threads: ingest (poll -> DLQ -> store -> commit -> trigger), retrain supervisor
(worker processes; registry writes on completion: the daemon is the registry's
single writer), connectivity probe, HTTP, and experiment tracking when enabled.
Training never runs in this process.

Lifecycle: /readyz answers 503 from the moment the HTTP server is up until
``start()`` returns, and again from ``stop()`` on (draining). ``stop(grace)``
stops intake first (the consumers finish their batch, already committed, and
leave their groups), lets in-flight training finish until the grace deadline,
cancels it then, and closes the rest.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Callable
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from daemon.codecs import check_codecs
from daemon.commands import Command, InvalidCommand, decode_command
from daemon.http import HttpServer, make_app
from daemon.ingest import Ingestor, IngestReport
from daemon.jobs import job_config, train_config
from daemon.kafka import (
    broker_reachable,
    check_sasl_mechanism,
    ensure_topics,
    make_consumer,
    make_producer,
)
from daemon.logs import get_logger
from daemon.metrics import Metrics
from daemon.outcomes import RunRecorder
from daemon.promotions import LivePath
from daemon.retrain import Backoff, JobOutcome, RetrainScheduler, TrainJob, TriggerPolicy
from daemon.settings import Settings
from daemon.store import BarStore, StoreError
from daemon.tracking import MlflowTracker, TrackingWorker
from daemon.undecodable import UndecodableBatch, UndecodableBatches
from daemon.watch import LiveWatch
from daemon.worker import JobSpec, run_job
from deploy.errors import RegistryError
from deploy.events import RegistryEvent
from deploy.registry import Registry
from trainers.table import trainer_backends

_log = get_logger(component="daemon")

INTAKE_JOIN_SECONDS: Final = 2.0
"""How long stop() waits for the intake threads' last batch even when the grace is used up."""


def ctd_version() -> str:
    try:
        return version("ctd")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def runtime_file(settings: Settings) -> Path:
    return settings.data_dir / "daemon.json"


class Daemon:
    """A running ctd instance. ``start()`` returns once every component is up."""

    def __init__(
        self,
        settings: Settings,
        *,
        bootstrap_servers: str,
        metrics_registry: CollectorRegistry | None = None,
        job_target: Callable[[JobSpec, Connection], None] = run_job,
    ) -> None:
        self.settings = settings
        self.bootstrap_servers = bootstrap_servers
        self.metrics = Metrics(metrics_registry or CollectorRegistry(), version=ctd_version())
        self.policy = TriggerPolicy(settings.min_bars, settings.retrain_every_bars)
        self.store: BarStore | None = None
        self.registry = Registry(settings.registry_dir)
        self.http: HttpServer | None = None
        self.producer: KafkaProducer | None = None
        self.ingestor: Ingestor | None = None
        self.scheduler: RetrainScheduler | None = None
        self.live: LivePath | None = None
        self.runs: RunRecorder | None = None
        self.watch: LiveWatch | None = None
        self.jobs: BackgroundScheduler | None = None
        self.tracking: TrackingWorker | None = None
        self._counts: dict[str, int] = {}
        self._trained: dict[str, int] = {}
        self._created_cache: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._started = threading.Event()
        self._cancelling = threading.Event()
        self._ingest_thread: threading.Thread | None = None
        self._kafka_ok = False
        self._store_writable = True  # false while the last ingest attempt failed to write
        self._threads: list[threading.Thread] = []
        self._train_config = train_config(settings)
        self._job_target = job_target

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> Daemon:
        """Bring every component up and return once ready; on failure stop them and re-raise."""
        try:
            self._start()
        except BaseException:
            self.stop(0)
            raise
        return self

    def _start(self) -> None:
        s = self.settings
        check_codecs()
        if s.mlflow_tracking_uri:
            tracker = MlflowTracker(s.mlflow_tracking_uri, s.mlflow_experiment)
            self.tracking = TrackingWorker(tracker, self.metrics.registry)
            _log.info("tracking_enabled", experiment=s.mlflow_experiment)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        # Left by a daemon that died mid-job; no worker of this one runs yet.
        shutil.rmtree(s.data_dir / "staging", ignore_errors=True)
        self.store = BarStore(s.store_path)
        cleaned = self.registry.recover()
        if cleaned:
            _log.warning("registry_recovered", cleaned=cleaned)
        self._load_state()
        self.metrics.add_model_age(self._slot_ages)
        self.live = LivePath(s, self.registry, self.store, self.metrics, self._publish)
        self.runs = RunRecorder(
            registry=self.registry,
            store=self.store,
            live=self.live,
            metrics=self.metrics,
            tracking=self.tracking,
            trained=self._trained,
        )
        self.watch = LiveWatch(
            s,
            registry=self.registry,
            store=self.store,
            predictions=self.live.predictions,
            metrics=self.metrics,
            trigger=self.request_retrain,
        )
        self.http = HttpServer(
            s.http_host, s.http_port, make_app(self.metrics.registry, self.readiness)
        ).start()
        timeout = s.kafka_request_timeout_ms / 1000
        check_sasl_mechanism(s, self.bootstrap_servers, timeout)
        if s.create_topics:
            created = ensure_topics(
                s,
                self.bootstrap_servers,
                [s.topic_bars, s.topic_dlq, s.topic_commands, s.topic_promotions],
                timeout=timeout,
            )
            if created:
                _log.info("topics_created", topics=created)
        self.producer = make_producer(s, self.bootstrap_servers)
        self.live.replay_unannounced()
        consumer = make_consumer(s, self.bootstrap_servers)
        self.ingestor = Ingestor(
            consumer,
            self.producer,
            self.store,
            dlq_topic=s.topic_dlq,
            poll_timeout_ms=s.kafka_poll_timeout_ms,
            max_records=s.kafka_max_poll_records,
            undecodable_retries=s.ingest_undecodable_retries,
            undecodable_backoff_seconds=s.ingest_undecodable_backoff_seconds,
        )
        # Worker processes share the cores with each other: OpenMP thread pools in
        # xgboost contending on 2 cores cost 30-45% of a fit (bench/e2e.py profile).
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        self.scheduler = RetrainScheduler(
            workers=s.train_workers,
            make_spec=self._job_spec,
            staging_root=s.data_dir / "staging",
            timeout_seconds=s.train_timeout_seconds,
            on_done=self._on_job_done,
            backoff=Backoff(s.retrain_backoff_base_seconds, s.retrain_backoff_cap_seconds),
            target=self._job_target,
            preload=trainer_backends(s.trainers),
        ).start()
        self._kafka_ok = True
        self.metrics.kafka_connected.set(1)
        self._ingest_thread = self._spawn(self._ingest_loop, "ctd-ingest")
        self._spawn(self._probe_loop, "ctd-probe")
        self._spawn(self._commands_loop, "ctd-commands")
        self.jobs = self._schedule_jobs()
        # Jobs interrupted by a previous stop (or due before it) run again now.
        for symbol, total in sorted(self._counts.items()):
            self._maybe_trigger(symbol, total, reason="startup")
        self._write_runtime_file()
        self._started.set()
        _log.info(
            "daemon_started",
            http=self.http.url,
            bootstrap=self.bootstrap_servers,
            symbols=len(self._counts),
        )

    def stop(self, grace_seconds: float = 30.0) -> None:
        """Drain and close everything, in about ``grace_seconds`` at most; idempotent.

        Order: not ready; intake stops (ingest and commands finish their current
        batch and leave their consumer groups; ingest commits each batch once
        stored); in-flight training may finish until the deadline and is
        cancelled then (or at once after ``cancel_training``); tracking gets
        what is left of the grace; producer, HTTP server and store close.
        """
        if self._stop.is_set():
            return
        deadline = time.monotonic() + grace_seconds
        self._stop.set()
        self.metrics.ready.set(0)
        running = self.scheduler.running if self.scheduler else 0
        _log.info("daemon_draining", grace_seconds=grace_seconds, training_running=running)
        if self.jobs:
            self.jobs.shutdown(wait=False)
        for t in self._threads:
            t.join(timeout=max(deadline - time.monotonic(), INTAKE_JOIN_SECONDS))
            if t.is_alive():
                _log.warning("thread_not_stopped", thread=t.name)
        if self.ingestor and self._ingest_thread is None:  # never polled: nobody else closes it
            self.ingestor.close()
        if self.scheduler:
            self.scheduler.stop(max(deadline - time.monotonic(), 0.0))
        if self.tracking:
            self.tracking.close(max(deadline - time.monotonic(), 1.0))
        if self.live:
            self.live.close()
        if self.producer:
            self.producer.close(timeout=5)
        if self.http:
            self.http.stop()
        if self.store:
            self.store.close()
        runtime_file(self.settings).unlink(missing_ok=True)
        _log.info("daemon_stopped")

    def cancel_training(self) -> None:
        """Kill in-flight training now rather than at the grace deadline (a second stop signal).

        Called from a signal handler, so it must not log (a lock held by the
        interrupted thread). The daemon's only multiprocessing children are its
        training workers; their jobs end as cancelled (logged), not failed.
        """
        self._cancelling.set()
        for child in multiprocessing.active_children():
            child.kill()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stop.wait(timeout)

    def _write_runtime_file(self) -> None:
        """Where this daemon can be reached, for `ctd promote` & co. (removed on stop)."""
        assert self.http is not None
        info = {
            "pid": os.getpid(),
            "bootstrap_servers": self.bootstrap_servers,
            "http": self.http.url,
        }
        path = runtime_file(self.settings)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(path)

    def _schedule_jobs(self) -> BackgroundScheduler:
        """Periodic live-monitor checks and the optional cron retrain of every symbol."""
        assert self.watch is not None
        jobs = BackgroundScheduler(
            timezone="UTC",
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
        )
        jobs.add_job(
            self.watch.check_staleness,
            IntervalTrigger(seconds=self.settings.monitor_check_seconds),
            id="staleness",
        )
        if self.settings.retrain_cron:
            jobs.add_job(
                self.watch.retrain_all,
                CronTrigger.from_crontab(self.settings.retrain_cron, timezone="UTC"),
                id="cron-retrain",
            )
        jobs.start()
        return jobs

    def _spawn(self, target: Any, name: str) -> threading.Thread:
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(t)
        t.start()
        return t

    # -- state ------------------------------------------------------------------------
    def _load_state(self) -> None:
        assert self.store is not None
        self._counts = self.store.counts()
        for symbol in self._counts:
            self.metrics.init_symbol(symbol)
        # In place: the run recorder updates this same dict.
        self._trained.clear()
        self._trained.update(
            (sym, count) for sym, (count, _at) in self.store.trained_state().items()
        )

    def _slot_ages(self) -> dict[tuple[str, str], float]:
        """Creation time of the model in each slot, read at scrape time (cached per version)."""
        out = {}
        for symbol in self.registry.symbols():
            slots = self.registry.slots(symbol)
            for slot, held in (("champion", slots.champion), ("shadow", slots.shadow)):
                if held is None:
                    continue
                key = (symbol, held)
                if key not in self._created_cache:
                    created = self.registry.metadata(symbol, held).get("created_at")
                    when = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
                    self._created_cache[key] = when.timestamp()
                out[(symbol, slot)] = self._created_cache[key]
        return out

    def readiness(self) -> dict[str, bool]:
        """Named checks of /readyz; ready when all are true."""
        store_ok = self.store is not None and self.store.ping()
        return {
            "started": self._started.is_set(),
            "not_draining": not self._stop.is_set(),
            "store": store_ok,
            "store_writable": self._store_writable,
            "broker": self._kafka_ok,
        }

    # -- ingest -------------------------------------------------------------------------
    def _ingest_loop(self) -> None:
        """Poll until stopped, then leave the group (every stored batch is already committed)."""
        assert self.ingestor is not None
        try:
            self._poll_until_stopped(self.ingestor)
        finally:
            self.ingestor.close()

    def _poll_until_stopped(self, ingestor: Ingestor) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                report = ingestor.poll_once()
            except StoreError as exc:
                self._store_writable = False
                self.metrics.ingest_errors.labels("store").inc()
                _log.error("ingest_store_error", error=str(exc))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            except Exception as exc:
                self.metrics.ingest_errors.labels("kafka").inc()
                _log.error("ingest_error", error=str(exc), exc_info=True)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            self._store_writable = True
            self._after_batch(report)

    def _after_batch(self, report: IngestReport) -> None:
        m = self.metrics
        if report.messages:
            m.ingest_messages.inc(report.messages)
        if report.invalid:
            m.dlq_messages.labels("message").inc(report.invalid)
            for reason in report.dlq_reasons[:5]:
                _log.warning("message_dead_lettered", reason=reason)
        if report.undecodable is not None:
            self._undecodable(report.undecodable, skipped=report.undecodable_skipped)
        for symbol, records in report.bars_by_symbol.items():
            m.ingest_bars.labels(symbol).inc(len(records))
        if report.valid_bars:
            m.store_transactions.inc()
        if report.max_event_lag_seconds is not None:
            m.ingest_lag.set(report.max_event_lag_seconds)
        if any(report.new_bars.values()):
            m.last_ingest.set(time.time())
        grown = {symbol: new for symbol, new in report.new_bars.items() if new > 0}
        for symbol, new in grown.items():
            m.store_new_bars.labels(symbol).inc(new)
            if symbol not in self._counts:
                m.init_symbol(symbol)
            self._counts[symbol] = self._counts.get(symbol, 0) + new
        # Counts first, so a retrain a live monitor requests carries this batch's count.
        if self.live is not None and self.watch is not None:
            resolved = self.live.on_batch(report.bars_by_symbol)
            self.watch.on_batch(report.bars_by_symbol, resolved)
        for symbol in grown:
            self._maybe_trigger(symbol, self._counts[symbol], reason="new_bars")

    def _undecodable(self, batch: UndecodableBatch, *, skipped: bool) -> None:
        tp = batch.partition
        where = {"topic": tp.topic, "partition": tp.partition, "offsets": [batch.first, batch.end]}
        if skipped:
            self.metrics.dlq_messages.labels("undecodable_batch").inc()
            _log.error("undecodable_batch_dead_lettered", reason=batch.reason, **where)
        else:
            self.metrics.ingest_errors.labels("undecodable").inc()
            _log.warning("undecodable_batch_retry", reason=batch.reason, **where)

    def _maybe_trigger(self, symbol: str, total: int, *, reason: str) -> None:
        assert self.scheduler is not None
        if self.policy.due(total, self._trained.get(symbol)):
            self.scheduler.request(symbol, total, reason)
            self.metrics.retrain_queue_depth.set(self.scheduler.pending)

    def request_retrain(self, symbol: str, reason: str = "command") -> bool:
        """A retrain requested by an operator or a live monitor, regardless of the bar-count
        policy (still coalesced and backed off by the scheduler)."""
        assert self.scheduler is not None
        return self.scheduler.request(symbol, self._counts.get(symbol, 0), reason)

    # -- operator commands ------------------------------------------------------------------
    def _commands_loop(self) -> None:
        """Commands from the commands topic, executed in order, committed after execution."""
        s = self.settings
        consumer = make_consumer(
            s,
            self.bootstrap_servers,
            topic=s.topic_commands,
            group_id=f"{s.kafka_group_id}.commands",
        )
        undecodable = UndecodableBatches(
            consumer,
            retries=s.ingest_undecodable_retries,
            backoff_seconds=s.ingest_undecodable_backoff_seconds,
        )
        try:
            while not self._stop.is_set():
                undecodable.resume_due()
                try:
                    batches = consumer.poll(timeout_ms=s.kafka_poll_timeout_ms)
                except UndecodableBatch as exc:
                    self._undecodable_commands(consumer, undecodable, exc)
                    continue
                except Exception as exc:
                    _log.error("commands_poll_failed", error=str(exc))
                    self._stop.wait(1.0)
                    continue
                for records in batches.values():
                    for record in records:
                        self._command_message(record.value)
                if batches:
                    consumer.commit()
        finally:
            consumer.close()

    def _undecodable_commands(
        self, consumer: KafkaConsumer, undecodable: UndecodableBatches, exc: UndecodableBatch
    ) -> None:
        """Commands that cannot be decoded are skipped after the retries, counted and logged
        with their offsets (no command is executed from a batch that does not decode)."""
        where = {"partition": exc.partition.partition, "offsets": [exc.first, exc.end]}
        if not undecodable.failed(exc):
            _log.warning("commands_undecodable_retry", reason=exc.reason, **where)
            return
        undecodable.skip(exc)
        with contextlib.suppress(KafkaError):
            consumer.commit({exc.partition: OffsetAndMetadata(exc.end, "", -1)})
        self.metrics.commands.labels("invalid", "undecodable").inc()
        _log.error("commands_undecodable_skipped", reason=exc.reason, **where)

    def _command_message(self, value: bytes | None) -> None:
        try:
            command = decode_command(value)
        except InvalidCommand as exc:
            self.metrics.commands.labels("invalid", "invalid").inc()
            _log.warning("command_invalid", reason=exc.reason)
            return
        self.handle_command(command)

    def handle_command(self, command: Command) -> RegistryEvent | None:
        """Execute an operator command; a refused one (e.g. no shadow) is logged, not raised."""
        assert self.live is not None
        log = _log.bind(symbol=command.symbol, action=command.action, actor=command.actor)
        try:
            event = self.live.command(command, self.request_retrain)
        except RegistryError as exc:
            self.metrics.commands.labels(command.action, "refused").inc()
            log.warning("command_refused", error=str(exc))
            return None
        self.metrics.commands.labels(command.action, "done").inc()
        log.info("command_done", reason=command.reason)
        return event

    def _probe_loop(self) -> None:
        while not self._stop.wait(2.0):
            ok = broker_reachable(self.bootstrap_servers, timeout=2.0, settings=self.settings)
            if ok != self._kafka_ok:
                _log.warning("broker_connectivity_changed", connected=ok)
            self._kafka_ok = ok
            self.metrics.kafka_connected.set(1 if ok else 0)
            self.metrics.ready.set(1 if all(self.readiness().values()) else 0)
            if self.scheduler:
                self.metrics.retrain_queue_depth.set(self.scheduler.pending)
                self.metrics.training_running.set(self.scheduler.running)

    # -- training ----------------------------------------------------------------------
    def _job_spec(self, job: TrainJob, staging: Path) -> JobSpec:
        config = job_config(self._train_config, self.registry, job.symbol)
        return JobSpec(
            symbol=job.symbol,
            run_id=job.run_id,
            store_path=self.settings.store_path,
            window_bars=self.settings.train_window_bars,
            staging_dir=staging,
            config=config,
            log_level=self.settings.log_level,
        )

    def _on_job_done(self, outcome: JobOutcome) -> None:
        if self.scheduler:
            self.metrics.training_running.set(self.scheduler.running)
            self.metrics.retrain_queue_depth.set(self.scheduler.pending)
        if outcome.cancelled or (not outcome.ok and self._cancelling.is_set()):
            # Not a failure: the job runs again after the restart (its bars are not marked).
            _log.warning(
                "training_cancelled",
                symbol=outcome.job.symbol,
                run_id=outcome.job.run_id,
                error=outcome.error,
            )
            return
        assert self.runs is not None
        self.runs.record(outcome)

    def _publish(self, event: RegistryEvent) -> None:
        if not event.is_promotion_topic_event or self.producer is None:
            return
        try:
            self.producer.send(
                self.settings.topic_promotions, key=event.symbol.encode(), value=event.to_json()
            ).get(timeout=10)
        except Exception as exc:
            self.metrics.promotion_publish_errors.inc()
            _log.error(
                "promotion_publish_failed", symbol=event.symbol, kind=event.event, error=str(exc)
            )
