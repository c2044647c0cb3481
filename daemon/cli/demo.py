"""The embedded demo: a synthetic live market feed into the daemon, with a live table.

Each demo symbol gets a history burst (so the first training starts within
seconds), then bars at ``demo_bars_per_second`` across all symbols. The feed
continues each symbol from its last stored bar, so re-running the demo on the
same data directory adds new bars instead of re-sending old ones. The first
symbol has a strong planted signal, the second a weak one, the rest are pure
random walks: the gates should keep those out of the registry.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence

from kafka import KafkaProducer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from daemon.kafka.bars import encode_batch
from daemon.loop import Loop
from daemon.status import all_status
from daemon.store.bars import BarStore
from deploy.registry import Registry
from trainers.data import bar_records
from trainers.synthetic import MarketGenerator, MarketSpec

SIGNAL_BY_RANK = (1.0, 0.6)
BAR_SECONDS = 60


def make_generators(symbols: Sequence[str], store: BarStore) -> dict[str, MarketGenerator]:
    """One generator per symbol, continuing after the last stored bar."""
    gens = {}
    for rank, symbol in enumerate(symbols):
        last = store.load(symbol, last_n=1)
        start_ts, start_price = 1_735_689_600, 100.0
        if len(last):
            start_ts, start_price = int(last.ts[-1]) + BAR_SECONDS, float(last.close[-1])
        spec = MarketSpec(
            symbol=symbol,
            seed=zlib.crc32(symbol.encode()) + store.count(symbol),
            start_price=start_price,
            signal_strength=SIGNAL_BY_RANK[rank] if rank < len(SIGNAL_BY_RANK) else 0.0,
            bar_seconds=BAR_SECONDS,
            start_ts=start_ts,
        )
        gens[symbol] = MarketGenerator(spec)
    return gens


class DemoFeed(Loop):
    """Produces synthetic bars to the bars topic on a background thread."""

    thread_name = "ctd-demo-feed"

    def __init__(
        self,
        producer: KafkaProducer,
        topic: str,
        generators: dict[str, MarketGenerator],
        *,
        history_bars: int,
        bars_per_second: float,
        regime_change_bars: int = 0,
    ) -> None:
        super().__init__()
        self._producer = producer
        self._topic = topic
        self._gens = generators
        self._history = history_bars
        self._rate = bars_per_second
        self._regime_change = regime_change_bars
        self.sent = 0
        self.events: list[str] = []

    def _send(self, symbol: str, n: int) -> None:
        records = bar_records(symbol, self._gens[symbol].next_bars(n))
        for i in range(0, len(records), 500):
            chunk = records[i : i + 500]
            self._producer.send(self._topic, key=symbol.encode(), value=encode_batch(symbol, chunk))
            self.sent += len(chunk)

    def _run(self) -> None:
        for symbol in self._gens:
            self._send(symbol, self._history)
        self._producer.flush()
        tick = 0.25
        per_tick = max(1, round(self._rate * tick / max(len(self._gens), 1)))
        first = next(iter(self._gens), None)
        flipped = False
        while not self._stop.wait(tick):
            for symbol in self._gens:
                self._send(symbol, per_tick)
            self._producer.flush()
            if first and self._regime_change and not flipped:
                gen = self._gens[first]
                if gen.bars_emitted >= self._regime_change:
                    gen.set_regime(signal_strength=-gen.signal_strength)
                    flipped = True
                    self.events.append(f"{first}: planted signal flipped at bar {gen.bars_emitted}")


def status_table(store: BarStore, registry: Registry, feed: DemoFeed) -> Table:
    title = f"ctd demo: {feed.sent} bars sent (Ctrl-C to stop)"
    if feed.events:
        title += f"\n{feed.events[-1]}"
    table = Table(title=title)
    for col in (
        "symbol",
        "bars stored",
        "versions",
        "champion",
        "trainer",
        "test acc",
        "baseline",
        "shadow",
        "last event",
    ):
        table.add_column(col)
    for row in all_status(store, registry):
        table.add_row(
            row.symbol,
            str(row.bars),
            str(row.versions),
            row.champion or "-",
            row.champion_trainer or "-",
            _pct(row.champion_test_accuracy),
            _pct(row.baseline_test_accuracy),
            row.shadow or "-",
            row.last_event or "-",
        )
    return table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def live_table(
    store: BarStore, registry: Registry, feed: DemoFeed, stop: threading.Event, console: Console
) -> None:
    """Refresh the table until ``stop`` is set."""
    with Live(status_table(store, registry, feed), console=console, refresh_per_second=2) as live:
        while not stop.wait(0.5):
            live.update(status_table(store, registry, feed))
