"""The bar window of a training run, and when a retrain would only repeat the last one.

A retrain on the bars of the symbol's last finished run cannot learn anything new:
training is seeded, so it repeats that run's result at full CPU cost and, while the
symbol has no champion, spends an attempt of the first-champion significance budget
(attempt k is gated at alpha/(k(k+1)), monitors.gates.bootstrap_alpha), so every later
genuine attempt is held to a stricter level. It happens in a backfill: bars still
arriving after a symbol's first job was launched queue a request behind it, yet that
job's worker, starting late, loaded every bar.

So the worker, once it has loaded the bars a job would train on and before training
(``judge``), compares them with the window of the symbol's last *finished* run (it
produced its metadata and the daemon recorded it, passed the gates or not:
``FinishedWindows``), and drops the job:

- ``same_data``: the window is that run's: as many bars, the same first and last ts and
  the same content hash (trainers.repro.bars_sha256). A corrected bar changes the hash,
  so the job runs.
- ``few_new_bars``, only with ``CTD_RETRAIN_MIN_NEW_BARS`` = N > 0 (default 0: only
  identical windows are dropped): fewer than N of the window's bars lie outside that
  run's ts range, and every bar of that range is as it was (its count and hash: no bar
  corrected, none filled in). A range the bars loaded do not reach back to counts as
  changed, and so does a corrected bar that has since left the window.

A job queued while its symbol's previous run trained is judged against that run: a
job's spec (with the window to compare) is made when it launches, after the previous
run's outcome was recorded on the same thread.

Never dropped: a symbol's first training; any job while this process has recorded no
finished run of the symbol (the memory is not persisted: after a restart the first
request runs); a retry after a failed run (a failed run records no window, so the retry
is compared with the last run that finished, and its new bars make it train); an
operator's retrain command (``TrainJob.force``). A dropped job writes no ledger line and
spends nothing of the budget; it is counted in ``ctd_retrains_skipped_total{symbol,
reason}`` and logged as ``retrain_skipped``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np

from trainers.data import Bars
from trainers.metadata import DataRange
from trainers.repro import bars_sha256

SkipReason = Literal["same_data", "few_new_bars"]


@dataclass(frozen=True, slots=True)
class DataWindow:
    """Which bars a run trained on: how many, the first and last ts, their content hash."""

    n_bars: int
    first_ts: int | None
    last_ts: int | None
    sha256: str

    @classmethod
    def of(cls, bars: Bars) -> DataWindow:
        empty = len(bars) == 0
        return cls(
            n_bars=len(bars),
            first_ts=None if empty else int(bars.ts[0]),
            last_ts=None if empty else int(bars.ts[-1]),
            sha256=bars_sha256(bars),
        )

    @classmethod
    def of_run(cls, data: DataRange) -> DataWindow:
        """The window a run's metadata records (``ModelMetadata.data``)."""
        return cls(data.n_bars, data.first_ts, data.last_ts, data.sha256)


@dataclass(frozen=True, slots=True)
class Skip:
    """Why a job was dropped: its ``reason``, the ``window`` it would have trained on and how
    many of those bars the previous run had not seen (``new_bars``)."""

    reason: SkipReason
    window: DataWindow
    new_bars: int


def load_size(window_bars: int, previous: DataWindow | None, min_new_bars: int) -> int:
    """How many of the newest bars to load for a job: the window, and ``min_new_bars`` more
    when they may be judged, so the previous run's whole range is in view whenever fewer
    than that many bars are new."""
    return window_bars + (min_new_bars if previous is not None else 0)


def judge(
    loaded: Bars, window_bars: int, previous: DataWindow | None, min_new_bars: int = 0
) -> Skip | None:
    """None when the job must train; else why it would repeat the previous run.

    ``loaded``: the symbol's newest bars, ``load_size(window_bars, previous, min_new_bars)``
    of them (fewer when fewer are stored); the job trains on the last ``window_bars``.
    ``previous``: the window of the symbol's last finished run, None to always train.
    """
    if previous is None:
        return None
    window = loaded.tail(window_bars)
    current = DataWindow.of(window)
    if current == previous:
        return Skip("same_data", current, 0)
    first, last = previous.first_ts, previous.last_ts
    if min_new_bars <= 0 or first is None or last is None:
        return None
    ts = window.ts
    new = int(np.searchsorted(ts, first, "left") + len(ts) - np.searchsorted(ts, last, "right"))
    if new >= min_new_bars or len(loaded) == 0 or loaded.ts[0] > first:
        return None
    if DataWindow.of(_between(loaded, first, last)) != previous:
        return None  # a bar of the previous range was corrected, or one was filled in
    return Skip("few_new_bars", current, new)


def _between(bars: Bars, first: int, last: int) -> Bars:
    """The bars with ``first <= ts <= last``."""
    s = slice(
        int(np.searchsorted(bars.ts, first, "left")), int(np.searchsorted(bars.ts, last, "right"))
    )
    return Bars(bars.ts[s], bars.open[s], bars.high[s], bars.low[s], bars.close[s], bars.volume[s])


class FinishedWindows:
    """The window of each symbol's last finished run in this process; thread-safe.

    The outcome recorder writes it once a run is recorded; the next job's spec reads it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, DataWindow] = {}

    def get(self, symbol: str) -> DataWindow | None:
        with self._lock:
            return self._windows.get(symbol)

    def record(self, symbol: str, window: DataWindow) -> None:
        with self._lock:
            self._windows[symbol] = window
