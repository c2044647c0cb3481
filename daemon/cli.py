"""The ``ctd`` command line: run, demo, status.

Exit codes: 0 success, 1 runtime failure, 2 invalid settings or usage.

``ctd run`` stops on SIGTERM or SIGINT: it drains (daemon/app.py ``Daemon.stop``:
intake stops, in-flight training gets ``CTD_SHUTDOWN_GRACE_SECONDS`` to finish)
and exits 0. A second SIGTERM / SIGINT while draining cancels the training at
once instead of waiting for the deadline; the rest of the shutdown still runs
in order, and the exit code is still 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.table import Table

from daemon.settings import Settings, SettingsError, load_settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_SIGNAL_CHECK_SECONDS = 0.2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"ctd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    handler = {
        "run": _cmd_run,
        "demo": _cmd_demo,
        "status": _cmd_status,
        "promote": _cmd_operator,
        "reject": _cmd_operator,
        "rollback": _cmd_operator,
        "retrain": _cmd_operator,
        "train": _cmd_train,
        "compare": _cmd_compare,
        "report": _cmd_report,
        "manifest": _cmd_manifest,
    }[args.command]
    return handler(settings, args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctd", description="Continuous training daemon for market-prediction models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "run", help="run the daemon (bundled local broker if CTD_KAFKA_BOOTSTRAP_SERVERS is unset)"
    )
    demo = sub.add_parser(
        "demo", help="run the daemon with a synthetic live market feed and a live table"
    )
    demo.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--no-table", action="store_true", help="log only, no live table")
    status = sub.add_parser("status", help="champion / shadow per symbol, from the data directory")
    status.add_argument("symbol", nargs="?", default=None)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    helps = {
        "promote": "make the shadow the champion (the old champion is kept for rollback)",
        "reject": "remove the shadow",
        "rollback": "restore the previous champion from the ledger",
        "retrain": "queue a retrain of the symbol in the running daemon",
    }
    for action, text in helps.items():
        op = sub.add_parser(action, help=text)
        op.add_argument("symbol")
        op.add_argument("--reason", default="", help="why (kept in the ledger)")
        op.add_argument("--actor", default=None, help="who (default: operator:$USER)")
    train = sub.add_parser(
        "train", help="train a symbol from an OHLCV CSV into the registry (no Kafka)"
    )
    train.add_argument("--csv", type=Path, required=True, metavar="FILE")
    train.add_argument("--symbol", required=True)
    train.add_argument(
        "--trainers", nargs="+", default=None, metavar="NAME", help="default: CTD_TRAINERS"
    )
    compare = sub.add_parser("compare", help="versions x candidates table and a PNG chart")
    compare.add_argument("symbol")
    compare.add_argument("--png", type=Path, default=None)
    report = sub.add_parser("report", help="markdown report of one symbol")
    report.add_argument("symbol")
    report.add_argument("--out", type=Path, default=None)
    manifest = sub.add_parser(
        "manifest", help="JSON deployment manifest of all champions and shadows"
    )
    manifest.add_argument("--out", type=Path, default=None)
    return parser


@contextlib.contextmanager
def _kafka(settings: Settings) -> Iterator[str]:
    """The configured cluster, or the bundled local broker for as long as the block runs."""
    if settings.kafka_bootstrap_servers:
        yield settings.kafka_bootstrap_servers
        return
    from daemon.broker import LocalBroker

    with LocalBroker(log_path=settings.data_dir / "broker.log") as broker:
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


def _start_errors() -> tuple[type[Exception], ...]:
    """Failures to start that the message explains fully: logged without a traceback."""
    from kafka.errors import KafkaError

    from daemon.broker import BrokerError
    from daemon.codecs import CodecUnavailableError
    from daemon.kafka import KafkaSecurityError, TopicSetupError
    from daemon.tracking import TrackingUnavailableError

    return (
        BrokerError,
        CodecUnavailableError,
        KafkaError,
        KafkaSecurityError,
        TopicSetupError,
        TrackingUnavailableError,
    )


def _cmd_run(settings: Settings, _args: argparse.Namespace) -> int:
    from daemon.logs import configure_logging, get_logger

    # Before importing the daemon: module-level loggers resolve their configuration on import.
    configure_logging(settings.log_level, settings.log_format)
    from daemon.app import Daemon

    log = get_logger(component="cli")
    signals = _StopSignals()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _kafka(settings) as bootstrap:
            daemon = Daemon(settings, bootstrap_servers=bootstrap)
            signals.on_repeat = daemon.cancel_training
            daemon.start()  # on failure it stops what it started
            try:
                signals.wait()
            finally:
                daemon.stop(settings.shutdown_grace_seconds)
    except _start_errors() as exc:
        log.error("daemon_failed", error=str(exc))
        return EXIT_FAILURE
    except Exception as exc:
        log.error("daemon_failed", error=str(exc), exc_info=True)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.logs import configure_logging

    console = Console()
    show_table = not args.no_table and console.is_terminal
    signals = _StopSignals()
    stop = signals.requested
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if show_table:
        # With a live table on screen, logs (ours and the worker processes') go to a
        # file beside the data instead: redirect the file descriptor, not just sys.stderr.
        with (settings.data_dir / "demo.log").open("a") as log_file:
            os.dup2(log_file.fileno(), 2)
        configure_logging(settings.log_level, "json")
    else:
        configure_logging(settings.log_level, settings.log_format)
    from daemon.app import Daemon  # after configure_logging, as in _cmd_run
    from daemon.demo import DemoFeed, live_table, make_generators
    from daemon.kafka import make_producer

    with _kafka(settings) as bootstrap:
        daemon = Daemon(settings, bootstrap_servers=bootstrap)
        signals.on_repeat = daemon.cancel_training
        daemon.start()
        assert daemon.store is not None and daemon.http is not None
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
    return _print_status(settings, None, as_json=False, console=console)


def _cmd_operator(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.commands import Command
    from daemon.operator import OperatorError, run
    from trainers.data import InvalidSymbolError, validate_symbol

    try:
        symbol = validate_symbol(args.symbol)
    except InvalidSymbolError as exc:
        print(f"ctd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    actor = args.actor or f"operator:{os.environ.get('USER', 'unknown')}"
    try:
        line = run(settings, Command(args.command, symbol, args.reason, actor))
    except OperatorError as exc:
        print(f"ctd {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(line, indent=2))
    return EXIT_OK


def _offline_errors() -> tuple[type[Exception], ...]:
    """Bad input to the offline tools: a usage error (exit 2), not a runtime failure."""
    from daemon.offline import CsvFormatError
    from daemon.reports import NothingToReportError
    from trainers.data import InvalidSymbolError
    from trainers.errors import InsufficientDataError, InvalidInputError, UnknownTrainerError

    return (
        CsvFormatError,
        NothingToReportError,
        InvalidSymbolError,
        InsufficientDataError,
        InvalidInputError,
        UnknownTrainerError,
    )


def _cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.logs import configure_logging
    from daemon.offline import train_csv

    configure_logging(settings.log_level, settings.log_format)
    try:
        outcome = train_csv(settings, args.csv, args.symbol, args.trainers)
    except _offline_errors() as exc:
        print(f"ctd train: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(asdict(outcome), indent=2))
    return EXIT_OK if outcome.passed else EXIT_FAILURE


def _cmd_compare(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.reports import compare, default_png_path, render_compare_table

    try:
        rows = compare(settings, args.symbol, args.png)
    except _offline_errors() as exc:
        print(f"ctd compare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    console = Console()
    console.print(render_compare_table(rows))
    console.print(f"chart: {args.png or default_png_path(settings, args.symbol)}")
    return EXIT_OK


def _cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.reports import report

    try:
        path = report(settings, args.symbol, args.out)
    except _offline_errors() as exc:
        print(f"ctd report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(path)
    return EXIT_OK


def _cmd_manifest(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.offline import default_manifest_path, manifest

    manifest(settings, args.out)
    print(args.out or default_manifest_path(settings))
    return EXIT_OK


def _cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    return _print_status(settings, args.symbol, as_json=args.json, console=Console())


def _print_status(
    settings: Settings, symbol: str | None, *, as_json: bool, console: Console
) -> int:
    from daemon.status import all_status
    from daemon.store import BarStore
    from deploy.registry import Registry

    store = BarStore(settings.store_path, read_only=True) if settings.store_path.exists() else None
    try:
        rows = all_status(store, Registry(settings.registry_dir), symbol)
    finally:
        if store is not None:
            store.close()
    if symbol is not None and not rows:
        print(f"ctd: no data for symbol {symbol!r} in {settings.data_dir}", file=sys.stderr)
        return EXIT_FAILURE
    if as_json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return EXIT_OK
    table = Table(title=f"ctd status ({settings.data_dir})")
    for col in (
        "symbol",
        "bars",
        "versions",
        "champion",
        "trainer",
        "test acc",
        "shadow",
        "last event",
        "at",
        "failures",
    ):
        table.add_column(col)
    for r in rows:
        acc = "-" if r.champion_test_accuracy is None else f"{100 * r.champion_test_accuracy:.1f}%"
        table.add_row(
            r.symbol,
            str(r.bars),
            str(r.versions),
            r.champion or "-",
            r.champion_trainer or "-",
            acc,
            r.shadow or "-",
            r.last_event or "-",
            r.last_event_ts or "-",
            str(r.failures),
        )
    console.print(table)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
