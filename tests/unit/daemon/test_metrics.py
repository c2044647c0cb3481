"""Series bookkeeping of the daemon's metrics: bounded label sets exist at 0 from the start,
and a symbol handed away leaves no series behind."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from daemon.metrics import Metrics


def _symbols(registry: CollectorRegistry) -> set[str]:
    return {
        sample.labels["symbol"]
        for family in registry.collect()
        for sample in family.samples
        if "symbol" in sample.labels
    }


def test_bounded_label_sets_exist_at_zero_from_start() -> None:
    registry = CollectorRegistry()
    Metrics(registry, version="t")
    for name, labels in (
        ("ctd_ingest_errors_total", {"kind": "store"}),
        ("ctd_predictions_published_total", {"outcome": "failed"}),
        ("ctd_commands_total", {"action": "rollback", "outcome": "refused"}),
        ("ctd_dlq_messages_total", {"kind": "undecodable_batch"}),
    ):
        assert registry.get_sample_value(name, labels) == 0.0, name


def test_a_symbol_handed_away_leaves_no_series() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, version="t")
    for symbol in ("AAA", "BBB"):
        metrics.init_symbol(symbol)
        metrics.init_trainer(symbol, "xgboost")
        metrics.ingest_bars.labels(symbol).inc()
    assert _symbols(registry) == {"AAA", "BBB"}
    metrics.forget_symbol("AAA")
    assert _symbols(registry) == {"BBB"}
    assert registry.get_sample_value("ctd_ingest_bars_total", {"symbol": "BBB"}) == 1.0
