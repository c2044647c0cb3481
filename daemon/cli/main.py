"""The ``ctd`` command line: one sub-command per operator task, one exit-code rule.

Exit codes: 0 success, 1 runtime failure, 2 invalid settings or usage. Every
error ctd raises on purpose carries its code (``daemon.errors.CtdError``); the
few errors of the other packages that mean "bad input" are usage errors too.
Heavy modules are imported inside the commands, so ``ctd status`` answers
without loading the training stack.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from daemon.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CtdError
from daemon.settings import Settings, load_settings
from deploy.errors import RegistryError
from trainers.data import InvalidSymbolError
from trainers.errors import InsufficientDataError, InvalidInputError, UnknownTrainerError

USAGE_ERRORS = (InvalidSymbolError, InsufficientDataError, InvalidInputError, UnknownTrainerError)
"""Errors of other packages that mean the command's input was wrong (exit 2)."""

Handler = Callable[[Settings, argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        return _handlers()[args.command](settings, args)
    except CtdError as exc:
        print(f"ctd {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except USAGE_ERRORS as exc:
        print(f"ctd {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RegistryError as exc:
        print(f"ctd {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _handlers() -> dict[str, Handler]:
    from daemon.cli.run import cmd_demo, cmd_run

    return {
        "run": cmd_run,
        "demo": cmd_demo,
        "status": _cmd_status,
        "promote": _cmd_operator,
        "reject": _cmd_operator,
        "rollback": _cmd_operator,
        "retrain": _cmd_operator,
        "train": _cmd_train,
        "compare": _cmd_compare,
        "report": _cmd_report,
        "manifest": _cmd_manifest,
        "backtest": _cmd_backtest,
        "doctor": _cmd_doctor,
        "tune": _cmd_tune,
        "experiment": _cmd_experiment,
    }


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
        if action == "promote":
            op.add_argument(
                "--force",
                action="store_true",
                help="promote on a trial shorter than CTD_PROMOTION_MIN_SAMPLES (in the ledger)",
            )
    train = sub.add_parser(
        "train", help="train a symbol from an OHLCV CSV into the registry (no Kafka)"
    )
    train.add_argument("--csv", type=Path, required=True, metavar="FILE")
    train.add_argument("--symbol", required=True)
    train.add_argument(
        "--trainers", nargs="+", default=None, metavar="NAME", help="default: CTD_TRAINERS"
    )
    compare = sub.add_parser(
        "compare", help="versions x candidates, one version's paired tests, and a PNG chart"
    )
    compare.add_argument("symbol")
    compare.add_argument("--png", type=Path, default=None)
    compare.add_argument(
        "--version", default=None, help="whose statistical comparison to show (default: newest)"
    )
    report = sub.add_parser("report", help="markdown report of one symbol")
    report.add_argument("symbol")
    report.add_argument("--out", type=Path, default=None)
    manifest = sub.add_parser(
        "manifest", help="JSON deployment manifest of all champions and shadows"
    )
    manifest.add_argument("--out", type=Path, default=None)
    backtest = sub.add_parser(
        "backtest", help="replay a symbol's history through the retrain-and-promote lifecycle"
    )
    backtest.add_argument("--symbol", required=True)
    backtest.add_argument(
        "--csv", type=Path, default=None, metavar="FILE", help="default: the local bar store"
    )
    backtest.add_argument("--out", type=Path, required=True, metavar="DIR")
    backtest.add_argument(
        "--cost-bps", type=float, default=1.0, help="cost per unit of turnover (basis points)"
    )
    experiment = sub.add_parser(
        "experiment", help="train a grid of trainers x params x seeds from an experiment file"
    )
    experiment_sub = experiment.add_subparsers(dest="experiment_command", required=True)
    experiment_run = experiment_sub.add_parser(
        "run", help="run FILE (.toml, .yaml) and write its evidence folder"
    )
    experiment_run.add_argument("file", type=Path, metavar="FILE")
    experiment_run.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="default: CTD_DATA_DIR/experiments"
    )
    _add_tune(sub)
    doctor = sub.add_parser("doctor", help="what is wrong with a symbol's registry state")
    doctor.add_argument("symbol", nargs="?", default=None)
    doctor.add_argument("--apply", action="store_true", help="carry out the repairs")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _cmd_experiment(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.cli.experiment import run_experiment
    from daemon.cli.experiment_report import summary_table
    from daemon.logs import configure_logging

    configure_logging("WARNING", settings.log_format)
    outcome = run_experiment(settings, args.file, args.out)
    print(summary_table(outcome.experiment, outcome.runs))
    if outcome.tracked or outcome.tracking_errors:
        print(f"MLflow: {outcome.tracked} candidate runs in experiment {outcome.experiment.name!r}")
    for problem in outcome.tracking_errors:
        print(f"MLflow: not logged: {problem}", file=sys.stderr)
    print(f"evidence: {outcome.folder}")
    return EXIT_OK if outcome.measured else EXIT_FAILURE


def _add_tune(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ctd tune``'s arguments (its own function: ``_parser`` is long enough)."""
    tune = sub.add_parser(
        "tune", help="search a trainer's hyperparameters for a symbol (extra `tune`: optuna)"
    )
    tune.add_argument("symbol", nargs="?", default=None, help="bars from the local bar store")
    tune.add_argument("--csv", type=Path, default=None, metavar="FILE", help="bars from a CSV")
    tune.add_argument("--symbol", dest="csv_symbol", default=None, help="the CSV's symbol")
    tune.add_argument("--trainer", required=True, metavar="NAME")
    tune.add_argument("--trials", type=int, default=None, help="default: CTD_TUNE_TRIALS")
    tune.add_argument(
        "--timeout", type=float, default=None, help="seconds; default: CTD_TUNE_BUDGET_SECONDS"
    )
    tune.add_argument("--seed", type=int, default=None, help="sampler seed; default: CTD_SEED")


def _cmd_tune(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console

    from daemon.cli.tune import print_outcome, tune_symbol
    from daemon.errors import UsageError
    from daemon.logs import configure_logging
    from trainers.errors import MissingExtraError

    configure_logging("WARNING", settings.log_format)
    names = {n for n in (args.symbol, args.csv_symbol) if n is not None}
    if len(names) != 1 or (args.csv_symbol is not None and args.csv is None):
        raise UsageError("give SYMBOL (local bar store) or --csv FILE --symbol SYMBOL")
    try:
        outcome = tune_symbol(
            settings,
            names.pop(),
            args.trainer,
            csv=args.csv,
            trials=settings.tune_trials if args.trials is None else args.trials,
            timeout=settings.tune_budget_seconds if args.timeout is None else args.timeout,
            seed=args.seed,
        )
    except MissingExtraError as exc:
        print(f"ctd tune: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return print_outcome(outcome, Console(), trained=settings.trainers)


def _cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console

    from daemon.cli.doctor import doctor

    return doctor(settings, args.symbol, apply=args.apply, as_json=args.json, console=Console())


def _cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console

    from daemon.cli.status import print_status

    return print_status(settings, args.symbol, as_json=args.json, console=Console())


def _cmd_operator(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.actions import Command
    from daemon.cli.operator import run
    from trainers.data import validate_symbol

    symbol = validate_symbol(args.symbol)
    actor = args.actor or f"operator:{os.environ.get('USER', 'unknown')}"
    force = getattr(args, "force", False)  # promote only
    line = run(settings, Command(args.command, symbol, args.reason, actor, force=force))
    print(json.dumps(line, indent=2))
    return EXIT_OK


def _cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.cli.train import train_csv
    from daemon.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    outcome = train_csv(settings, args.csv, args.symbol, args.trainers)
    print(json.dumps(asdict(outcome), indent=2))
    return EXIT_OK if outcome.passed else EXIT_FAILURE


def _cmd_compare(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console

    from daemon.cli.compare import compare
    from daemon.cli.compare_render import render_compare_table, render_comparison

    png = args.png or settings.paths.compare_png(args.symbol)
    report = compare(settings, args.symbol, png, version=args.version)
    console = Console()
    console.print(render_compare_table(report.rows))
    console.print(render_comparison(report))
    console.print(f"chart: {png}")
    return EXIT_OK


def _cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.cli.report import report

    print(report(settings, args.symbol, args.out))
    return EXIT_OK


def _cmd_manifest(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.cli.manifest import manifest

    out: Path = args.out or settings.paths.manifest
    manifest(settings, out)
    print(out)
    return EXIT_OK


def _cmd_backtest(settings: Settings, args: argparse.Namespace) -> int:
    from daemon.cli.backtest import backtest
    from daemon.logs import configure_logging

    configure_logging("WARNING", settings.log_format)
    report, paths = backtest(settings, args.symbol, args.csv, args.out, cost_bps=args.cost_bps)
    for name, s in report.scores.items():
        acc = "-" if s.accuracy is None else f"{s.accuracy:.3f}"
        sharpe = "-" if s.sharpe is None else f"{s.sharpe:.2f}"
        print(f"{name:12s} accuracy {acc}  Sharpe {sharpe}  return {s.cumulative_return:+.2%}")
    print(f"replayed {report.bars} bars in {report.seconds:.1f} s")
    for path in paths:
        print(path)
    return EXIT_OK
