# Over 400 lines: the daemon's wiring: each component started and stopped in order in one class.
"""The one place that wires ctd together; ``Daemon`` builds ready components and runs them.

Start order (stop runs it backwards, through one ``ExitStack``): stores, HTTP
(so /readyz answers 503 while starting), registry recovery (and runs a crash
cut off), topics, producer, live path and announcer, training queue, trial
checkpoints and the handover (daemon.fleet), intake, command consumer, broker
probe and topic watch, schedules.
``stop(grace)`` thus stops intake first (the consumers finish their batch,
already committed, and leave their groups), checkpoints the trials, lets in-flight
training finish until the grace deadline, cancels it then, gives tracking what
is left, and closes the rest. Training never runs in this process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from multiprocessing.connection import Connection
from typing import Final

from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from daemon.actions import Command
from daemon.api import ReadApi
from daemon.errors import OperatorError, SettingsError, StoreError
from daemon.fleet.handover import Handover
from daemon.fleet.ownership import Ownership, member_id
from daemon.http import make_app
from daemon.httpserver import DROP_REASONS, HttpServer
from daemon.intake import Intake
from daemon.kafka.clients import ensure_topics, make_consumer, make_producer
from daemon.kafka.codecs import check_codecs
from daemon.kafka.commands import CommandConsumer
from daemon.kafka.commands_secret import commands_key
from daemon.kafka.ingest import Ingestor
from daemon.kafka.probe import BrokerProbe, check_sasl_mechanism
from daemon.kafka.promotions import PromotionsTopicSink
from daemon.kafka.topics import TopicWatch
from daemon.live.announce import Announcer
from daemon.live.mlflow_mirror import MlflowRegistryMirror
from daemon.live.path import LivePath, SavedTrialPlacer
from daemon.live.publish import PredictionPublisher, PredictionRecord
from daemon.live.watch import LiveWatch
from daemon.logs import get_logger
from daemon.metrics import Metrics, ctd_version
from daemon.registry import open_registry
from daemon.schedules import Schedules
from daemon.settings import Settings
from daemon.store.bars import BarStore
from daemon.store.predictions import PredictionStore
from daemon.training.jobs import job_spec
from daemon.training.outcomes import RunRecorder
from daemon.training.recovery import recover_runs
from daemon.training.scheduler import Backoff, JobOutcome, RetrainScheduler
from daemon.training.tracking import MlflowTracker, TrackingWorker
from daemon.training.trigger import RetrainTrigger, TriggerPolicy
from daemon.training.tuner import ScheduledTuning
from daemon.training.window import FinishedWindows
from daemon.training.worker import JobSpec, run_job
from deploy.alerts import AlertSink, WebhookNotifier
from deploy.durable import write_atomic
from deploy.errors import DuplicateCommandError, FdrMismatch, FencedError, RegistryError
from deploy.events import RegistryEvent
from deploy.fdr import open_policy
from deploy.live import LiveScorer
from deploy.quarantine import Quarantine, Quarantined
from trainers.table import trainer_backends

_log = get_logger(component="daemon")

INTAKE_JOIN_SECONDS: Final = 2.0
"""How long stop() waits for the intake threads' last batch even when the grace is used up."""


class Daemon:
    """A running ctd instance. ``start()`` returns once every component is up.

    The components exist from ``start()`` on (reading one before is an
    AttributeError); ``settings``, ``metrics`` and ``registry`` from construction.
    """

    store: BarStore
    predictions: PredictionStore
    http: HttpServer
    producer: KafkaProducer
    live: LivePath
    watch: LiveWatch
    scheduler: RetrainScheduler
    trigger: RetrainTrigger
    intake: Intake
    ownership: Ownership
    probe: BrokerProbe
    schedules: Schedules

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
        # Daemon writes carry its claim on the symbol (daemon.fleet); ownership exists from start.
        claims = lambda symbol: self.ownership.claim(symbol)  # noqa: E731, PLW0108
        alone = settings.on_bundled_broker
        self.registry = open_registry(settings, claims=None if alone else claims)
        self.quarantine = Quarantine(on_enter=_quarantined)
        self.metrics.add_quarantine(self.quarantine.entries)
        self._job_target = job_target
        self.tracking: TrackingWorker | None = None
        self._stack = ExitStack()
        self._deadline = 0.0
        self._started = threading.Event()
        self._stopping = threading.Event()
        self._cancelling = threading.Event()

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> Daemon:
        """Bring every component up and return once ready; on failure stop them and re-raise."""
        try:
            self._start(self._stack)
        except BaseException:
            self.stop(0)
            raise
        self._started.set()
        _log.info(
            "daemon_started",
            http=self.http.url,
            bootstrap=self.bootstrap_servers,
            symbols=len(self.trigger.symbols()),
        )
        return self

    def _start(self, stack: ExitStack) -> None:
        """Each stage pushes its own cleanup, so stop() undoes exactly what was started."""
        check_codecs()
        self._start_local_state(stack)
        self._start_kafka(stack)
        self._start_live(stack)
        self._start_training(stack)
        self._start_intake(stack)
        # Interrupted jobs run again when their partitions are assigned (daemon.fleet.handover).
        write_atomic(self.settings.paths.runtime, self._runtime_info())
        stack.callback(self.settings.paths.runtime.unlink, missing_ok=True)

    def _start_local_state(self, stack: ExitStack) -> None:
        """Tracking, the SQLite stores, HTTP (/readyz 503 until started), registry recovery."""
        s, paths, m = self.settings, self.settings.paths, self.metrics
        tracking = None
        if s.mlflow_tracking_uri:
            tracking = TrackingWorker(
                MlflowTracker(s.mlflow_tracking_uri, s.mlflow_experiment), m.registry
            )
            stack.callback(lambda: tracking.close(self._remaining(1.0)))
            _log.info("tracking_enabled", experiment=s.mlflow_experiment)
        self.tracking = tracking
        paths.root.mkdir(parents=True, exist_ok=True)
        # An unusable (or, for a fleet, missing) secret stops start-up.
        shared = self.registry.storage.shared
        self._commands_key = commands_key(s, create=True, shared=shared)
        # Left by a daemon that died mid-job; no worker of this one runs yet.
        shutil.rmtree(paths.staging, ignore_errors=True)
        self.store = BarStore(paths.bars)
        stack.callback(self.store.close)
        self.predictions = PredictionStore(paths.predictions)
        stack.callback(self.predictions.close)
        member = member_id(s.kafka_group_instance_id, paths.member)
        self.ownership = Ownership(member, self.store.partitions)
        # Up once the stores are open, so /readyz never reports a store still opening.
        api = ReadApi(self.registry.unfenced(), self.store, self._latest_prediction)
        app = make_app(m.registry, self.readiness, api, quarantined=self.quarantine.entries)
        self.http = HttpServer(
            s.http_host,
            s.http_port,
            app,
            workers=s.http_workers,
            max_connections=s.http_max_connections,
            read_timeout=s.http_read_timeout_seconds,
            write_timeout=s.http_write_timeout_seconds,
            on_drop=m.init_http(DROP_REASONS),
        )
        stack.callback(self.http.stop)
        self.http.start()
        # Shared storage: another machine may be writing; each symbol is synced when claimed.
        cleaned = [] if self.registry.storage.shared else self.registry.recover()
        if cleaned:
            _log.warning("registry_recovered", cleaned=cleaned)
        if not self.registry.storage.shared:  # a fleet's symbols are checked when claimed
            self.quarantine.check(self.registry, self.registry.symbols())
            # Runs a crash cut off before their ledger line, before the trigger reads the
            # training marks. Unfenced, like recover(): no partition is assigned yet, and no
            # other daemon writes to private storage. The takeover announces what is placed.
            placer = SavedTrialPlacer(self.registry.unfenced(), self.predictions, actor="daemon")
            recover_runs(self.registry, self.store, placer, skip=self.quarantine)

    def _start_kafka(self, stack: ExitStack) -> None:
        """Security check, topics, the producer (DLQ, promotions)."""
        s = self.settings
        timeout = s.kafka_request_timeout_ms / 1000
        check_sasl_mechanism(s, self.bootstrap_servers, timeout)
        if s.create_topics:
            created = ensure_topics(s, self.bootstrap_servers, timeout=timeout)
            if created:
                _log.info("topics_created", topics=created)
        self.producer = make_producer(s, self.bootstrap_servers)
        stack.callback(self.producer.close, timeout=5)

    def _start_live(self, stack: ExitStack) -> None:
        """Announcer (replaying what a killed run did not announce), live path, monitors."""
        s, m = self.settings, self.metrics
        announcer = self._announcer()
        stack.callback(lambda: announcer.close(5.0))
        try:  # promotions across symbols: the fleet's procedure must be the one configured
            policy = open_policy(s.promotion_fdr_config, self.registry.storage)
        except FdrMismatch as exc:
            setting = "CTD_PROMOTION_FDR_HORIZON" if exc.name == "horizon" else "CTD_PROMOTION_FDR"
            raise SettingsError([f"{setting}: {exc}"]) from exc
        scorer = LiveScorer(
            self.registry,
            self.predictions,
            lambda symbol, n: self.store.load(symbol, last_n=n),
            s.promotion_config,
            quarantine=self.quarantine,
            policy=policy,
            target=s.target,
            horizon=s.horizon_bars,
        )
        publisher = PredictionPublisher(self.producer, s, scorer.model, m)
        self.live = LivePath(scorer, self.registry, announcer, m, publisher=publisher)
        m.add_live(self.live.accuracy_rows, self.live.trial_rows)
        m.add_alert_deliveries(announcer.deliveries)
        m.add_model_age(self.live.slot_ages)
        self.watch = LiveWatch(
            s,
            registry=self.registry,
            metrics=m,
            trigger=self._monitor_retrain,
            served=self.ownership.served,
            quarantine=self.quarantine,
        )
        m.add_live_monitors(self.watch.readings)

    def _start_training(self, stack: ExitStack) -> None:
        """The worker pool, the retrain trigger and the outcome recorder."""
        s, m = self.settings, self.metrics
        # Worker processes share the cores with each other: OpenMP thread pools in
        # xgboost contending on 2 cores cost 30-45% of a fit (bench/e2e.py profile).
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        windows = FinishedWindows()  # a job on the bars of the last finished run is dropped
        self.scheduler = RetrainScheduler(
            workers=s.train_workers,
            make_spec=partial(job_spec, s, s.train_config, self.registry, windows=windows),
            staging_root=s.paths.staging,
            timeout_seconds=s.train_timeout_seconds,
            on_done=self._on_job_done,
            backoff=Backoff(s.retrain_backoff_base_seconds, s.retrain_backoff_cap_seconds),
            target=self._job_target,
            preload=trainer_backends(s.trainers),
        )
        counts = self.store.counts()
        for symbol in counts:
            m.init_symbol(symbol)
        trained = {sym: count for sym, (count, _at) in self.store.trained_state().items()}
        self.trigger = RetrainTrigger(
            TriggerPolicy(s.min_bars, s.retrain_every_bars),
            self.scheduler,
            counts=counts,
            trained=trained,
            held=self.quarantine,
        )
        self._runs = RunRecorder(
            registry=self.registry,
            placer=self.live,
            metrics=m,
            tracking=self.tracking,
            on_trained=self._mark_trained,
            on_covered=self._mark_covered,
            windows=windows,
        )
        m.retrain_queue_depth.set_function(lambda: self.scheduler.pending)
        m.training_running.set_function(lambda: self.scheduler.running)
        self.scheduler.start()
        stack.callback(lambda: self.scheduler.stop(self._remaining(0.0)))

    def _start_fleet(self, stack: ExitStack) -> Handover:
        """The handover of partitions that move, and its trial checkpoints (a last one when
        intake stops, before the group is left: the final evidence)."""
        handover = Handover(
            self.settings,
            self.bootstrap_servers,
            store=self.store,
            registry=self.registry,
            log=self.predictions,
            live=self.live,
            watch=self.watch,
            trigger=self.trigger,
            ownership=self.ownership,
            metrics=self.metrics,
        )
        stack.callback(lambda: handover.checkpointer.stop(self._remaining(1.0)))
        handover.checkpointer.start()
        return handover

    def _start_intake(self, stack: ExitStack) -> None:
        """Ingest, commands, the broker probe and the schedules: from here on, work flows."""
        s, m = self.settings, self.metrics
        self.handover = handover = self._start_fleet(stack)
        consumer = handover.attach(make_consumer(s, self.bootstrap_servers, subscribe=False))
        ingestor = Ingestor(consumer, self.producer, self.store, s)
        self.intake = Intake(
            ingestor,
            live=self.live,
            watch=self.watch,
            trigger=self.trigger,
            metrics=m,
            before_poll=handover.process,
            before_close=handover.leave,
        )
        stack.callback(lambda: self.intake.stop(self._remaining(INTAKE_JOIN_SECONDS)))
        self.intake.start()
        commands = CommandConsumer(
            s,
            self.bootstrap_servers,
            handle=self.handle_command,
            key=self._commands_key,
            counter=m.commands,
            rejected=m.commands_rejected,
        ).start()
        stack.callback(lambda: commands.stop(self._remaining(INTAKE_JOIN_SECONDS)))
        self.probe = BrokerProbe(s, self.bootstrap_servers, m.kafka_connected).start()
        stack.callback(self.probe.stop)
        if s.create_topics:  # a broker that came back empty gets them again

            def recreated(topics: list[str]) -> None:  # the consumers catch up with new logs
                self.handover.topic_reset.recreated(topics)
                commands.topic_reset.recreated(topics)

            watch = TopicWatch(
                s, self.bootstrap_servers, m.topics_recreated, on_recreated=recreated
            )
            stack.callback(watch.start().stop)
        m.ready.set_function(lambda: float(all(self.readiness().values())))
        tuning = ScheduledTuning(
            s, served=self.ownership.served, bar_count=self.store.count, metrics=m
        )
        stack.callback(tuning.stop)  # after the schedules stop: no round starts after this
        self.schedules = Schedules(
            s,
            check=self.watch.check,
            retrain_all=self.watch.retrain_all,
            recheck=self._recheck,
            tune_all=tuning.run_all,
        )
        stack.callback(self.schedules.stop)

    def stop(self, grace_seconds: float = 30.0) -> None:
        """Drain and close everything, in about ``grace_seconds`` at most; idempotent."""
        if self._stopping.is_set():
            return
        self._deadline = time.monotonic() + grace_seconds
        self._stopping.set()
        running = self.scheduler.running if hasattr(self, "scheduler") else 0
        _log.info("daemon_draining", grace_seconds=grace_seconds, training_running=running)
        self._stack.close()
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

    def _latest_prediction(self, symbol: str) -> PredictionRecord | None:
        live: LivePath | None = getattr(self, "live", None)
        return None if live is None or live.publisher is None else live.publisher.latest(symbol)

    def _remaining(self, floor: float) -> float:
        """Seconds left of the stop's grace, but at least ``floor``."""
        return max(self._deadline - time.monotonic(), floor)

    # -- wiring ---------------------------------------------------------------------
    def _announcer(self) -> Announcer:
        """The alert sinks: the promotions topic always, the webhook and MLflow if configured."""
        s = self.settings
        sinks: list[AlertSink] = [PromotionsTopicSink(self.producer, s.topic_promotions)]
        if s.webhook_url:
            sinks.append(
                WebhookNotifier(
                    s.webhook_url, timeout=s.webhook_timeout_seconds, retries=s.webhook_retries
                )
            )
        if s.mlflow_registry_mirror and s.mlflow_tracking_uri:  # settings: one needs the other
            uri, prefix = s.mlflow_tracking_uri, s.mlflow_model_prefix
            sinks.append(MlflowRegistryMirror(self.registry, uri, prefix=prefix))
        return Announcer(self.registry, sinks, self.metrics)

    def _runtime_info(self) -> bytes:
        """Where this daemon can be reached, for `ctd promote` & co. (removed on stop)."""
        info = {"pid": os.getpid(), "bootstrap_servers": self.bootstrap_servers}
        return json.dumps({**info, "http": self.http.url}).encode()

    def _recheck(self) -> None:
        """Scheduled: release the quarantined symbols a repair made whole again."""
        for symbol in self.quarantine.recheck(self.registry):
            _log.info("symbol_released", symbol=symbol)
            self.live.scorer.forget(symbol)

    def readiness(self) -> dict[str, bool]:
        """Named checks of /readyz; ready when all are true. Answers from the first moment
        the HTTP server is up, so each check looks at its component only once it exists."""
        store: BarStore | None = getattr(self, "store", None)
        intake: Intake | None = getattr(self, "intake", None)
        probe: BrokerProbe | None = getattr(self, "probe", None)
        handover: Handover | None = getattr(self, "handover", None)
        return {
            "started": self._started.is_set(),
            "not_draining": not self._stopping.is_set(),
            "store": store is not None and store.ping(),
            "store_writable": intake is None or intake.store_writable,
            "broker": probe is not None and probe.connected,
            "group": handover is not None and handover.joined,
        }

    # -- training and commands ----------------------------------------------------------
    def request_retrain(self, symbol: str, reason: str = "command") -> bool:
        """A retrain requested by an operator, regardless of the bar-count policy and forced: it
        trains even on the very bars of the last finished run (daemon.training.window). Still
        coalesced and backed off by the scheduler; False for a quarantined symbol."""
        if symbol in self.quarantine:
            return False
        return self.scheduler.request(symbol, self.trigger.count(symbol), reason, force=True)

    def _monitor_retrain(self, symbol: str, reason: str) -> bool:
        """A retrain a live monitor or the cron schedule asks for, regardless of the bar-count
        policy; dropped if it would train on the bars of the last finished run."""
        return self.trigger.request(symbol, reason)

    def handle_command(self, command: Command) -> RegistryEvent | None:
        """Execute a verified operator command. A refused one (an unknown symbol, no shadow,
        a promote on too short a trial without force) or a duplicate (its id already in the
        ledger) is counted and logged, not raised, and changes nothing."""
        log = _log.bind(
            symbol=command.symbol,
            action=command.action,
            actor=command.actor,
            command_id=command.id,
        )
        try:
            unknown = self._unknown_symbol(command)
            if unknown:
                raise OperatorError(f"{command.symbol}: {unknown}")
            event = self.live.command(command, self.request_retrain)
        except DuplicateCommandError as exc:
            self.metrics.commands.labels(command.action, "duplicate").inc()
            log.info("command_duplicate", seq=exc.seq)
            return None
        except (RegistryError, OperatorError, StoreError) as exc:
            self.metrics.commands.labels(command.action, "refused").inc()
            log.warning("command_refused", error=str(exc))
            return None
        self.metrics.commands.labels(command.action, "done").inc()
        log.info("command_done", reason=command.reason, force=command.force)
        return event

    def _unknown_symbol(self, command: Command) -> str | None:
        """Why the symbol is unknown here, or None. A retrain needs bars stored here; a slot
        action bars here or slots in the registry (another daemon of a fleet may hold the
        bars). Refused early, an unknown symbol gets no registry entry, no metric series and
        no live state."""
        if self.store.count(command.symbol):
            return None
        if command.action == "retrain":
            return "no bar of this symbol was ever stored here"
        slots = self.registry.slots(command.symbol)
        if slots.champion is None and slots.shadow is None:
            return "no bar of this symbol was ever stored here, and the registry holds no model"
        return None

    def _mark_trained(self, symbol: str, bar_count: int) -> None:
        kept = self.trigger.trained(symbol, bar_count)
        try:
            self.store.mark_trained(symbol, kept, time.time())
        except StoreError as exc:  # the count in memory stands; the store catches up next run
            _log.error("mark_trained_failed", symbol=symbol, error=str(exc))

    def _mark_covered(self, symbol: str, bar_count: int) -> None:
        """A job dropped on the bars of the last run: that run covered ``bar_count`` bars. The
        mark keeps the run's time, which start-up recovery compares with the ledger's last
        line (daemon.training.recovery): a later one would read as a lost run."""
        kept = self.trigger.trained(symbol, bar_count)
        try:
            mark = self.store.trained_state().get(symbol)
            if mark is not None and mark[0] < kept:
                self.store.mark_trained(symbol, kept, mark[1])
        except StoreError as exc:
            _log.error("mark_trained_failed", symbol=symbol, error=str(exc))

    def _on_job_done(self, outcome: JobOutcome) -> None:
        if outcome.cancelled or (not outcome.ok and self._cancelling.is_set()):
            # Not a failure: the job runs again after the restart (its bars are not marked).
            _log.warning(
                "training_cancelled",
                symbol=outcome.job.symbol,
                run_id=outcome.job.run_id,
                error=outcome.error,
            )
            return
        try:
            self._runs.record(outcome)
        except FencedError as exc:  # the symbol moved to another daemon while it trained
            self.metrics.registry_fenced.labels(outcome.job.symbol).inc()
            _log.warning("training_outcome_fenced", symbol=outcome.job.symbol, error=str(exc))


def _quarantined(entry: Quarantined) -> None:
    _log.error("symbol_quarantined", symbol=entry.symbol, reason=entry.reason, error=entry.detail)
