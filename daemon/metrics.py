# Over 400 lines: every exported metric declared in one place, so names and labels agree.
"""The daemon's Prometheus metrics, all on one injected registry.

Names follow DESIGN.md (prefix ``ctd_``, ``_total`` counters, ``_seconds``
base units). Labels stay small and bounded: symbol (validated, see
trainers.data), trainer, slot, kind, outcome, gate. Values that are state rather
than events (model age) are computed at scrape time by a custom collector.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from daemon.actions import Action
from daemon.errors import RejectReason
from deploy.quarantine import Quarantined
from monitors.rules import WARNING_KINDS

TRAINING_OUTCOMES = ("champion", "shadow", "rejected", "failed")
RETRAIN_SKIP_REASONS = ("same_data", "few_new_bars")  # daemon.training.window.SkipReason
INGEST_ERROR_KINDS = ("store", "kafka", "undecodable")
IMPLAUSIBLE_RULES = ("future", "jump", "symbol_cap")  # daemon.kafka.plausibility.Rule
PUBLISH_OUTCOMES = ("acked", "failed")
COMMAND_OUTCOMES = ("done", "refused", "duplicate")
TRAINING_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
REBUILD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def ctd_version() -> str:
    """The installed ctd's version (``ctd_build_info``); "0+unknown" from a bare source tree."""
    try:
        return version("ctd")
    except PackageNotFoundError:
        return "0+unknown"


class ModelAgeCollector(Collector):
    """``ctd_model_age_seconds{symbol,slot}`` from the creation time of each slotted model."""

    def __init__(self, created_at: Callable[[], Mapping[tuple[str, str], float]]) -> None:
        self._created_at = created_at

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "ctd_model_age_seconds",
            "Seconds since the model in each slot was trained.",
            labels=["symbol", "slot"],
        )
        now = time.time()
        for (symbol, slot), created in sorted(self._created_at().items()):
            family.add_metric([symbol, slot], max(now - created, 0.0))
        yield family


LiveRow = tuple[str, str, float | None]  # symbol, slot, rolling live accuracy
TrialRow = tuple[str, float | None, int, float | None]  # symbol, log10 e-value, samples, level


class LiveCollector(Collector):
    """Live-scoring gauges read at scrape time from the live scorer's state."""

    def __init__(
        self,
        accuracy: Callable[[], Iterable[LiveRow]],
        trials: Callable[[], Iterable[TrialRow]],
    ) -> None:
        self._accuracy, self._trials = accuracy, trials

    def collect(self) -> Iterable[GaugeMetricFamily]:
        acc = GaugeMetricFamily(
            "ctd_live_accuracy",
            "Rolling live accuracy of the model in each slot on resolved bars.",
            labels=["symbol", "slot"],
        )
        for symbol, slot, value in self._accuracy():
            if value is not None:
                acc.add_metric([symbol, slot], value)
        stat = GaugeMetricFamily(
            "ctd_promotion_test_statistic",
            "log10 of the shadow-better e-value of the running trial (promote at log10(1/alpha)).",
            labels=["symbol"],
        )
        samples = GaugeMetricFamily(
            "ctd_shadow_trial_samples",
            "Paired bars in the running shadow trial.",
            labels=["symbol"],
        )
        level = GaugeMetricFamily(
            "ctd_promotion_level",
            "log10 of the e-value at which the running trial promotes: log10(1/alpha) per "
            "symbol, log10(1/alpha_t) under fleet-wide e-LOND.",
            labels=["symbol"],
        )
        for symbol, statistic, n, promote_at in self._trials():
            if statistic is not None:
                stat.add_metric([symbol], statistic)
            samples.add_metric([symbol], n)
            if promote_at is not None:
                level.add_metric([symbol], promote_at)
        yield from (acc, stat, samples, level)


class AlertDeliveriesCollector(Collector):
    """``ctd_alert_deliveries_total{sink,outcome}`` from each alert sink's own counters."""

    def __init__(self, counts: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(
            "ctd_alert_deliveries",
            "Decisions announced, by alert sink and outcome (sent, failed, dropped).",
            labels=["sink", "outcome"],
        )
        for sink, outcome, n in sorted(self._counts()):
            family.add_metric([sink, outcome], n)
        yield family


MonitorReading = tuple[str, str, str, float]  # symbol, monitor kind, reading name, value


class LiveMonitorCollector(Collector):
    """Readings of the live monitors at scrape time: drift's as ``ctd_feature_psi{symbol,
    feature}``, every other monitor's as ``ctd_live_monitor_reading{symbol,monitor,reading}``."""

    def __init__(self, readings: Callable[[], Iterable[MonitorReading]]) -> None:
        self._readings = readings

    def collect(self) -> Iterable[GaugeMetricFamily]:
        psi = GaugeMetricFamily(
            "ctd_feature_psi",
            "Population stability index of each feature: live window vs champion training data.",
            labels=["symbol", "feature"],
        )
        other = GaugeMetricFamily(
            "ctd_live_monitor_reading",
            "Current readings of the live monitors of each champion.",
            labels=["symbol", "monitor", "reading"],
        )
        for symbol, kind, name, value in self._readings():
            if kind == "drift":
                psi.add_metric([symbol, name], value)
            else:
                other.add_metric([symbol, kind, name], value)
        yield from (psi, other)


class QuarantineCollector(Collector):
    """``ctd_symbol_quarantined{symbol,reason}``: 1 per quarantined symbol (deploy.quarantine)."""

    def __init__(self, entries: Callable[[], Iterable[Quarantined]]) -> None:
        self._entries = entries

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "ctd_symbol_quarantined",
            "1 for each symbol set aside because a file of its registry state cannot be read "
            "(reason: slots, ledger, metadata, model or version); see `ctd doctor`.",
            labels=["symbol", "reason"],
        )
        for entry in self._entries():
            family.add_metric([entry.symbol, entry.reason], 1.0)
        yield family


class Metrics:
    """Every metric the daemon exports. Construct once per process with its registry."""

    def __init__(self, registry: CollectorRegistry, *, version: str) -> None:
        self.registry = registry
        r = registry
        Info("ctd_build", "ctd build information.", registry=r).info({"version": version})
        self.kafka_connected = Gauge(
            "ctd_kafka_connected", "1 when the Kafka broker is reachable, else 0.", registry=r
        )
        self.ready = Gauge("ctd_ready", "1 when /readyz answers ready.", registry=r)
        self.topics_recreated = Counter(
            "ctd_topics_recreated_total",
            "Topics of the daemon it re-created because the broker had lost them (a broker"
            " that came back empty, such as the bundled one on memory storage), by topic.",
            ["topic"],
            registry=r,
        )
        self.ingest_messages = Counter(
            "ctd_ingest_messages_total", "Kafka messages consumed from the bars topic.", registry=r
        )
        self.ingest_bars = Counter(
            "ctd_ingest_bars_total", "Valid bars received, per symbol.", ["symbol"], registry=r
        )
        self.store_new_bars = Counter(
            "ctd_store_new_bars_total",
            "Bars newly written to the store (re-deliveries excluded).",
            ["symbol"],
            registry=r,
        )
        self.store_transactions = Counter(
            "ctd_store_transactions_total",
            "Committed store transactions (one per poll batch).",
            registry=r,
        )
        self.dlq_messages = Counter(
            "ctd_dlq_messages_total",
            "Records sent to the dead-letter topic, by kind: message (invalid content, with its"
            " bytes) or undecodable_batch (a reference to records that could not be decoded).",
            ["kind"],
            registry=r,
        )
        for kind in ("message", "undecodable_batch"):
            self.dlq_messages.labels(kind)
        self.implausible_bars = Counter(
            "ctd_implausible_bars_total",
            "Valid bars sent to the dead-letter topic (with their message) by a plausibility"
            " rule: future (ts beyond the allowed clock skew), jump (too far from the last"
            " close), symbol_cap (a new symbol beyond max_symbols).",
            ["rule"],
            registry=r,
        )
        for rule in IMPLAUSIBLE_RULES:
            self.implausible_bars.labels(rule)
        self.store_corrections = Counter(
            "ctd_store_corrections_total",
            "Stored bars replaced by a bar with the same (symbol, ts) and different values.",
            ["symbol"],
            registry=r,
        )
        self.ingest_errors = Counter(
            "ctd_ingest_errors_total",
            "Ingest batches that failed and will be re-delivered, by kind.",
            ["kind"],
            registry=r,
        )
        self.ingest_lag = Gauge(
            "ctd_ingest_lag_seconds",
            "Age, when the last batch was stored, of the newest bar of its symbols (a late bar"
            " does not make it older).",
            registry=r,
        )
        self.last_ingest = Gauge(
            "ctd_last_ingest_timestamp_seconds",
            "Unix time of the last batch that stored at least one bar.",
            registry=r,
        )
        self.retrain_queue_depth = Gauge(
            "ctd_retrain_queue_depth", "Retrain jobs waiting for a worker.", registry=r
        )
        self.training_running = Gauge(
            "ctd_training_running", "Training jobs running in worker processes.", registry=r
        )
        self.training_runs = Counter(
            "ctd_training_runs_total",
            "Finished training runs by outcome (champion, shadow, rejected, failed).",
            ["symbol", "outcome"],
            registry=r,
        )
        self.tuning_runs = Counter(
            "ctd_tuning_runs_total",
            "Scheduled tuning runs of a symbol's trainer by outcome: tuned (best params stored),"
            " no_trials (none completed in the budget), failed, timeout (killed past the budget).",
            ["trainer", "outcome"],
            registry=r,
        )
        self.retrains_skipped = Counter(
            "ctd_retrains_skipped_total",
            "Retrain jobs dropped untrained because they would repeat the symbol's last finished"
            " run, by reason: same_data (its very bars), few_new_bars (fewer new bars than"
            " retrain_min_new_bars, none changed).",
            ["symbol", "reason"],
            registry=r,
        )
        self.training_duration = Histogram(
            "ctd_training_duration_seconds",
            "Wall time of a training job, trigger to registry, by outcome.",
            ["outcome"],
            buckets=TRAINING_BUCKETS,
            registry=r,
        )
        self.training_warnings = Counter(
            "ctd_training_warnings_total",
            "Training-time monitor warnings.",
            ["symbol", "trainer", "kind"],
            registry=r,
        )
        self.gate_verdicts = Counter(
            "ctd_gate_verdicts_total",
            "Quality-gate verdicts of candidates.",
            ["trainer", "gate", "outcome"],
            registry=r,
        )
        self.registry_versions = Counter(
            "ctd_registry_versions_total",
            "Model versions added to the registry.",
            ["symbol"],
            registry=r,
        )
        self.champion_bootstraps = Counter(
            "ctd_champion_bootstraps_total", "First champions of a symbol.", ["symbol"], registry=r
        )
        self.shadow_placements = Counter(
            "ctd_shadow_placements_total",
            "Candidates placed in the shadow slot.",
            ["symbol"],
            registry=r,
        )
        self.promotions = Counter(
            "ctd_promotions_total", "Shadows promoted to champion.", ["symbol"], registry=r
        )
        self.shadow_rejections = Counter(
            "ctd_shadow_rejections_total", "Shadows rejected.", ["symbol"], registry=r
        )
        self.rollbacks = Counter(
            "ctd_rollbacks_total", "Champions rolled back.", ["symbol"], registry=r
        )
        self.live_predictions = Counter(
            "ctd_live_predictions_total",
            "Live predictions logged, per symbol.",
            ["symbol"],
            registry=r,
        )
        self.live_errors = Counter(
            "ctd_live_errors_total",
            "Live-scoring problems (unloadable model, failed batch).",
            ["symbol"],
            registry=r,
        )
        self.commands = Counter(
            "ctd_commands_total",
            "Operator commands by action and outcome.",
            ["action", "outcome"],
            registry=r,
        )
        self.commands_rejected = Counter(
            "ctd_commands_rejected_total",
            "Commands refused unexecuted: unsigned, bad signature, expired or replayed.",
            ["reason"],
            registry=r,
        )
        self.live_monitor_triggers = Counter(
            "ctd_live_monitor_triggers_total",
            "Retrains requested by live monitors and schedules, by kind.",
            ["symbol", "kind"],
            registry=r,
        )

        # The fleet: partitions follow the consumer group, history is rebuilt from Kafka.
        self.owned_partitions = Gauge(
            "ctd_owned_partitions", "Bars-topic partitions this daemon owns.", registry=r
        )
        self.predictions_published = Counter(
            "ctd_predictions_published_total",
            "Prediction records sent to the predictions topic, by broker outcome.",
            ["outcome"],
            registry=r,
        )
        self.prediction_latency = Histogram(
            "ctd_prediction_latency_seconds",
            "Bar arrival (its poll returned) to the broker's acknowledgement of the bar's "
            "published prediction.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rebuild_seconds = Histogram(
            "ctd_rebuild_duration_seconds",
            "Wall time to replay taken-over partitions from Kafka into the local store.",
            buckets=REBUILD_BUCKETS,
            registry=r,
        )
        self.rebuild_bars = Counter(
            "ctd_rebuild_bars_total",
            "Bars replayed from Kafka into the local store when partitions were taken over.",
            registry=r,
        )
        self.takeovers = Counter(
            "ctd_symbol_takeovers_total",
            "Symbols this daemon took over (claimed in the registry after a rebalance).",
            registry=r,
        )
        self.trial_checkpoints = Counter(
            "ctd_trial_checkpoints_total",
            "Shadow-trial checkpoints written to the registry.",
            registry=r,
        )
        self.registry_fenced = Counter(
            "ctd_registry_fenced_total",
            "Registry writes refused because another daemon now owns the symbol.",
            ["symbol"],
            registry=r,
        )
        self.http_dropped = Counter(
            "ctd_http_connections_dropped_total",
            "HTTP connections closed without an answer from the app, by reason (httpserver).",
            ["reason"],
            registry=r,
        )
        # Series with bounded labels exist from start-up at 0, so rate() and increase() read
        # data (and alerts see the first event) before anything has happened.
        for kind in INGEST_ERROR_KINDS:
            self.ingest_errors.labels(kind)
        for outcome in PUBLISH_OUTCOMES:
            self.predictions_published.labels(outcome)
        for action in get_args(Action):
            for outcome in COMMAND_OUTCOMES:
                self.commands.labels(action, outcome)
        for why in get_args(RejectReason):
            self.commands_rejected.labels(why)

    def init_symbol(self, symbol: str) -> None:
        """Create a symbol's event series at 0, so that increase() sees its first event."""
        for counter in (
            self.promotions,
            self.shadow_rejections,
            self.rollbacks,
            self.champion_bootstraps,
            self.shadow_placements,
            self.registry_versions,
            self.live_errors,
            self.registry_fenced,
            self.store_corrections,
        ):
            counter.labels(symbol)
        for outcome in TRAINING_OUTCOMES:
            self.training_runs.labels(symbol, outcome)
        for reason in RETRAIN_SKIP_REASONS:
            self.retrains_skipped.labels(symbol, reason)

    def forget_symbol(self, symbol: str) -> None:
        """Remove every series of ``symbol`` (handed over to another daemon): a daemon exports
        the symbols it serves, so series do not pile up as symbols move around a fleet."""
        for metric in vars(self).values():
            if isinstance(metric, Counter | Gauge) and "symbol" in metric._labelnames:
                metric.remove_by_labels({"symbol": symbol})

    def init_http(self, reasons: Iterable[str]) -> Callable[[str], None]:
        """Create the HTTP drop series at 0; the callback the server counts drops with."""
        for reason in reasons:
            self.http_dropped.labels(reason)
        return lambda reason: self.http_dropped.labels(reason).inc()

    def init_trainer(self, symbol: str, trainer: str) -> None:
        """Create a symbol's warning series of one trainer at 0 (its first run)."""
        for kind in WARNING_KINDS:
            self.training_warnings.labels(symbol, trainer, kind)

    def add_live(
        self,
        accuracy: Callable[[], Iterable[LiveRow]],
        trials: Callable[[], Iterable[TrialRow]],
    ) -> None:
        self.registry.register(LiveCollector(accuracy, trials))

    def add_alert_deliveries(self, counts: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self.registry.register(AlertDeliveriesCollector(counts))

    def add_live_monitors(self, readings: Callable[[], Iterable[MonitorReading]]) -> None:
        self.registry.register(LiveMonitorCollector(readings))

    def add_model_age(self, created_at: Callable[[], Mapping[tuple[str, str], float]]) -> None:
        self.registry.register(ModelAgeCollector(created_at))

    def add_quarantine(self, entries: Callable[[], Iterable[Quarantined]]) -> None:
        self.registry.register(QuarantineCollector(entries))
