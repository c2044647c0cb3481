"""A live-scoring rig on real files: bar store, prediction log and scorer under one directory,
fed in the daemon's order per batch (store the bars, then score them)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from daemon.store.bars import BarStore
from daemon.store.predictions import PredictionStore
from deploy.live import LiveScorer, LiveUpdate
from deploy.registry import Registry
from deploy.sequential import PromotionTestConfig
from trainers.data import Bars, bar_records


def bar_slice(bars: Bars, start: int, stop: int) -> Bars:
    s = slice(start, stop)
    return Bars(bars.ts[s], bars.open[s], bars.high[s], bars.low[s], bars.close[s], bars.volume[s])


def bar_concat(*parts: Bars) -> Bars:
    names = ("ts", "open", "high", "low", "close", "volume")
    return Bars(*(np.concatenate([getattr(p, n) for p in parts]) for n in names))


class Rig:
    """``train`` bars are stored at once (the champion's training history); ``push`` stores
    and scores ``live`` bars. ``scorer_args``: extra ``LiveScorer`` keywords (target, horizon)."""

    def __init__(
        self,
        root: Path,
        registry: Registry,
        symbol: str,
        *,
        train: Bars,
        live: Bars,
        config: PromotionTestConfig,
        **scorer_args: Any,
    ) -> None:
        self.root, self.registry, self.symbol = root, registry, symbol
        self.live, self.config, self.scorer_args = live, config, scorer_args
        self.store = BarStore(root / "bars.sqlite")
        self.log = PredictionStore(root / "predictions.sqlite")
        self.store.upsert(bar_records(symbol, train))
        self.scorer = self._scorer()

    def _scorer(self, slots_poll_seconds: float = 1.0) -> LiveScorer:
        return LiveScorer(
            self.registry,
            self.log,
            lambda s, n: self.store.load(s, last_n=n),
            self.config,
            slots_poll_seconds=slots_poll_seconds,
            **self.scorer_args,
        )

    def push(self, start: int, stop: int, batch: int = 10) -> list[LiveUpdate]:
        """Store then score live bars [start, stop) in batches."""
        out = []
        for lo in range(start, stop, batch):
            chunk = bar_records(self.symbol, bar_slice(self.live, lo, min(lo + batch, stop)))
            self.store.upsert(chunk)
            out.append(self.scorer.on_bars(self.symbol, chunk))
        return out

    def restart(self) -> None:
        """Close everything and reopen on the same files, as a daemon restart does."""
        self.close()
        self.store = BarStore(self.root / "bars.sqlite")
        self.log = PredictionStore(self.root / "predictions.sqlite")
        self.scorer = self._scorer()

    def predictions(self) -> list[tuple[int, str, str, float, float | None]]:
        """(bar_ts, slot, version, value, outcome) of every logged prediction."""
        with sqlite3.connect(self.root / "predictions.sqlite") as conn:
            rows = conn.execute(
                "SELECT bar_ts, slot, version, value, outcome FROM predictions"
                " ORDER BY bar_ts, slot"
            ).fetchall()
        return [(int(a), str(b), str(c), float(d), e) for a, b, c, d, e in rows]

    def close(self) -> None:
        self.store.close()
        self.log.close()
