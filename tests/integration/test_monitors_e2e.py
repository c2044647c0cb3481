"""Live and training-time monitors inside a running daemon (real broker, store, registry)."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from kafka import KafkaProducer

from daemon.app import Daemon
from daemon.kafka.bars import encode_batch
from daemon.settings import Settings
from tests.support.helpers import ledger, wait_for
from trainers.data import bar_records
from trainers.synthetic import MarketGenerator, MarketSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _send(producer: KafkaProducer, topic: str, gen: MarketGenerator, symbol: str, n: int) -> None:
    records = bar_records(symbol, gen.next_bars(n))
    for i in range(0, n, 50):
        producer.send(topic, key=symbol.encode(), value=encode_batch(symbol, records[i : i + 50]))
    producer.flush()


def _metrics(daemon: Daemon) -> str:
    assert daemon.http is not None
    with urllib.request.urlopen(f"{daemon.http.url}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def _value(text: str, prefix: str) -> float:
    """Sum of the samples whose line starts with ``prefix`` (0 when there are none)."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def test_volatility_regime_change_fires_drift_once_and_retrains(
    settings_factory: Callable[..., Settings],
) -> None:
    """Volatility x3 on one symbol: drift fires, one retrain follows within the cooldown;
    the unchanged symbol fed the same number of bars fires nothing."""
    settings = settings_factory(
        http_port=0,
        min_bars=3000,
        retrain_every_bars=1_000_000,
        trainers=("xgboost",),
        walk_forward_folds=0,
        retrain_cooldown_seconds=3600,
    )
    gens = {
        s: MarketGenerator(MarketSpec(symbol=s, seed=seed, signal_strength=1.0))
        for s, seed in (("ALPHA", 0), ("GAMMA", 2))
    }
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=False
    )
    daemon = Daemon(settings, bootstrap_servers=str(settings.kafka_bootstrap_servers)).start()
    try:
        for symbol, gen in gens.items():
            _send(producer, settings.topic_bars, gen, symbol, 3000)
        wait_for(lambda: all(daemon.registry.slots(s).champion for s in gens), timeout=120)

        gens["ALPHA"].set_regime(volatility=0.03)  # x3
        for symbol, gen in gens.items():
            _send(producer, settings.topic_bars, gen, symbol, 1500)
        wait_for(
            lambda: (
                _value(_metrics(daemon), 'ctd_training_runs_total{outcome="shadow",symbol="ALPHA"}')
                + _value(
                    _metrics(daemon), 'ctd_training_runs_total{outcome="rejected",symbol="ALPHA"}'
                )
                >= 1
            ),
            timeout=120,
            message="retrain after drift",
        )
        wait_for(
            lambda: daemon.store is not None and daemon.store.count("GAMMA") == 4500, timeout=60
        )
        text = _metrics(daemon)
        assert _value(text, 'ctd_live_monitor_triggers_total{kind="drift",symbol="ALPHA"}') == 1
        assert _value(text, 'ctd_live_monitor_triggers_total{kind="decay",symbol="ALPHA"}') == 0
        assert _value(text, 'ctd_live_monitor_triggers_total{kind="drift",symbol="GAMMA"}') == 0
        assert _value(text, 'ctd_live_monitor_triggers_total{kind="decay",symbol="GAMMA"}') == 0
        assert _value(text, 'ctd_feature_psi{feature="vol_20",symbol="ALPHA"}') > 0.35
        assert _value(text, 'ctd_feature_psi{feature="vol_20",symbol="GAMMA"}') < 0.35
        runs = "ctd_training_runs_total{outcome="
        assert _value(text, runs) - _value(text, 'ctd_training_runs_total{outcome="champion"') == 1
    finally:
        daemon.stop(10)
        producer.close()


def test_cron_retrain_retrains_every_symbol_with_a_champion(
    settings_factory: Callable[..., Settings],
) -> None:
    """The retrain_cron job, run by the daemon's scheduler, queues one retrain per symbol that
    has a champion and none for a symbol without one; the retrain runs to a registry outcome."""
    settings = settings_factory(
        http_port=0,
        min_bars=1500,
        retrain_every_bars=1_000_000,
        trainers=("xgboost",),
        walk_forward_folds=0,
        retrain_cron="0 3 * * *",
        monitor_check_seconds=3600,
    )
    gens = {
        s: MarketGenerator(MarketSpec(symbol=s, seed=seed, signal_strength=strength))
        for s, seed, strength in (("ALPHA", 0, 1.0), ("WALK", 5, 0.0))
    }
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=False
    )
    daemon = Daemon(settings, bootstrap_servers=str(settings.kafka_bootstrap_servers)).start()

    def trained(symbol: str) -> float:
        """Finished training runs of ``symbol``, whatever their outcome."""
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in _metrics(daemon).splitlines()
            if line.startswith("ctd_training_runs_total{") and f'symbol="{symbol}"' in line
        )

    try:
        for symbol, gen in gens.items():
            _send(producer, settings.topic_bars, gen, symbol, 1500)
        wait_for(lambda: daemon.registry.slots("ALPHA").champion is not None, timeout=120)
        wait_for(lambda: trained("WALK") == 1, timeout=120, message="the random walk trained")
        assert daemon.registry.slots("WALK").champion is None
        job = daemon.schedules.job("cron-retrain")
        assert job is not None and "hour='3'" in str(job.trigger)
        before = trained("ALPHA")
        # New bars since the champion: a retrain on its very bars would be dropped.
        _send(producer, settings.topic_bars, gens["ALPHA"], "ALPHA", 50)
        wait_for(lambda: daemon.store.count("ALPHA") == 1550, timeout=60, message="50 new bars")

        job.modify(next_run_time=datetime.now(UTC))  # the scheduler runs it now
        wait_for(lambda: trained("ALPHA") == before + 1, timeout=120, message="cron retrain")
        text = _metrics(daemon)
        assert _value(text, 'ctd_live_monitor_triggers_total{kind="schedule",symbol="ALPHA"}') == 1
        assert _value(text, 'ctd_live_monitor_triggers_total{kind="schedule",symbol="WALK"}') == 0
        assert trained("WALK") == 1
    finally:
        daemon.stop(10)
        producer.close()


def test_divergent_training_warns_in_metrics_logs_and_ledger_and_registers_nothing(
    settings_factory: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    """A diverging TCN is stopped: the warning is a metric, a log event and a ledger line,
    and no version reaches the registry."""
    settings = settings_factory(
        http_port=0,
        min_bars=3000,
        trainers=("tcn",),
        trainer_params={"tcn": {"preset": "tiny", "lr": 1.0, "grad_clip": 1e9}},
        walk_forward_folds=0,
    )
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, acks="all", enable_idempotence=False
    )
    daemon = Daemon(settings, bootstrap_servers=str(settings.kafka_bootstrap_servers)).start()
    try:
        gen = MarketGenerator(MarketSpec(symbol="DIVERGE", seed=3, signal_strength=1.0))
        _send(producer, settings.topic_bars, gen, "DIVERGE", 3000)
        wait_for(lambda: ledger(daemon.registry, "DIVERGE"), timeout=120, message="run recorded")
        line = ledger(daemon.registry, "DIVERGE")[-1]
        assert line["event"] == "candidate_rejected"
        assert "training raised divergence" in line["reason"]
        assert daemon.registry.versions("DIVERGE") == []
        text = _metrics(daemon)
        assert (
            _value(
                text,
                'ctd_training_warnings_total{kind="divergence",symbol="DIVERGE",trainer="tcn"}',
            )
            >= 1
        )
        captured = capsys.readouterr()
        assert "training_warning" in captured.out + captured.err
    finally:
        daemon.stop(10)
        producer.close()
