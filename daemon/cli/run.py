"""``ctd run`` and ``ctd demo``: the daemon in the foreground until a stop signal.

``ctd run`` stops on SIGTERM or SIGINT: it drains (``daemon.app.Daemon.stop``:
intake stops, in-flight training gets ``CTD_SHUTDOWN_GRACE_SECONDS`` to finish)
and exits 0. A second SIGTERM / SIGINT while draining cancels the training at
once instead of waiting for the deadline; the rest of the shutdown still runs
in order, and the exit code is still 0. Without ``CTD_KAFKA_BOOTSTRAP_SERVERS``
both start the bundled broker for as long as they run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Final

from rich.console import Console

from daemon.errors import EXIT_FAILURE, EXIT_OK, StartupError
from daemon.settings import Settings

_SIGNAL_CHECK_SECONDS = 0.2


GC_THRESHOLDS: Final = (50_000, 20, 10)
"""Collector thresholds of the running daemon (CPython's defaults: 700, 10, 10)."""


def settle_heap() -> None:
    """The daemon process's collector policy, set once it has started.

    The start-up heap (modules, settings, components: long-lived by construction) is
    frozen out of every later collection, and young collections run every 50,000 net
    allocations: the live path allocates many short-lived objects, and collections that
    walked the whole heap cost a third of its CPU. bench/fleet.py, 1,000 symbols flat-out:
    2,800-3,100 -> 4,300-4,500 bars/s, RSS unchanged. Process-wide, so the entry points
    call it, not ``Daemon`` (tests start many daemons in one process).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@contextlib.contextmanager
def _kafka(settings: Settings) -> Iterator[str]:
    """The configured cluster, or the bundled local broker for as long as the block runs."""
    if settings.kafka_bootstrap_servers:
        yield settings.kafka_bootstrap_servers
        return
    from daemon.kafka.broker import LocalBroker

    with LocalBroker(
        log_path=settings.paths.broker_log, storage=settings.bundled_broker_storage
    ) as broker:
        yield broker.bootstrap_servers


class _StopSignals:
    """SIGTERM / SIGINT: the first sets ``requested``; each later one calls ``on_repeat``."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.on_repeat: Callable[[], None] | None = None
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def wait(self) -> None:
        """Block until the first signal.

        Waits in short slices: the kernel may hand the signal to any thread, and
        Python then runs the handler only when the main thread executes bytecode
        again, which a wait without timeout never does.
        """
        while not self.requested.wait(_SIGNAL_CHECK_SECONDS):
            pass

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        if self.requested.is_set() and self.on_repeat is not None:
            self.on_repeat()
        self.requested.set()


def cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    from daemon.logs import configure_logging, get_logger

    # Before importing the daemon: module-level loggers resolve their configuration on import.
    configure_logging(settings.log_level, settings.log_format)
    from kafka.errors import KafkaError

    from daemon.app import Daemon

    log = get_logger(component="cli")
    signals = _StopSignals()
    settings.paths.root.mkdir(parents=True, exist_ok=True)
    try:
        with _kafka(settings) as bootstrap:
            daemon = Daemon(settings, bootstrap_servers=bootstrap)
            signals.on_repeat = daemon.cancel_training
            daemon.start()  # on failure it stops what it started
            settle_heap()
            try:
                signals.wait()
            finally:
                daemon.stop(settings.shutdown_grace_seconds)
    except (StartupError, KafkaError) as exc:  # the message explains it: no traceback
        log.error("daemon_failed", error=str(exc))
        return EXIT_FAILURE
    except Exception as exc:
        log.error("daemon_failed", error=str(exc), exc_info=True)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.logs import configure_logging

    # The feed's clock runs thousands of times faster than the wall clock (minute bars at
    # demo_bars_per_second): after a few hours its bars are ahead of now, and plausible.
    settings = settings.model_copy(update={"max_future_skew_seconds": None})
    console = Console()
    show_table = not args.no_table and console.is_terminal
    signals = _StopSignals()
    stop = signals.requested
    settings.paths.root.mkdir(parents=True, exist_ok=True)
    if show_table:
        # With a live table on screen, logs (ours and the worker processes') go to a
        # file beside the data instead: redirect the file descriptor, not just sys.stderr.
        with settings.paths.demo_log.open("a") as log_file:
            os.dup2(log_file.fileno(), 2)
        configure_logging(settings.log_level, "json")
    else:
        configure_logging(settings.log_level, settings.log_format)
    from daemon.app import Daemon  # after configure_logging, as in cmd_run
    from daemon.cli.demo import DemoFeed, live_table, make_generators
    from daemon.cli.status import print_status
    from daemon.kafka.clients import make_producer

    with _kafka(settings) as bootstrap:
        daemon = Daemon(settings, bootstrap_servers=bootstrap)
        signals.on_repeat = daemon.cancel_training
        daemon.start()
        settle_heap()
        producer = make_producer(settings, bootstrap)
        feed = DemoFeed(
            producer,
            settings.topic_bars,
            make_generators(settings.demo_symbols, daemon.store),
            history_bars=settings.demo_history_bars,
            bars_per_second=settings.demo_bars_per_second,
            regime_change_bars=settings.demo_regime_change_bars,
        ).start()
        url = f"{daemon.http.url}/metrics"
        console.print(f"ctd demo: broker {bootstrap}, metrics {url}, data {settings.data_dir}")
        timer = threading.Timer(args.seconds, stop.set) if args.seconds else None
        if timer:
            timer.start()
        try:
            if show_table:
                live_table(daemon.store, daemon.registry, feed, stop, console)
            else:
                signals.wait()
        finally:
            if timer:
                timer.cancel()
            feed.stop()
            producer.close(timeout=5)
            daemon.stop(settings.shutdown_grace_seconds)
    return print_status(settings, None, as_json=False, console=console)
