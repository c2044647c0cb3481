"""Every error the daemon raises on purpose, and the exit code the CLI gives for it.

Hierarchy::

    CtdError(Exception)                                   exit 1 unless said otherwise
    ├── UsageError                                        exit 2: fix the input and run again
    │   ├── SettingsError(UsageError, ValueError)         a setting is invalid (names each one)
    │   ├── CsvFormatError(UsageError, ValueError)        an OHLCV CSV file is malformed
    │   └── NothingToReportError(UsageError, LookupError) nothing in the registry
    ├── StartupError                                      the daemon refuses to start
    │   ├── BrokerError                                   the bundled broker cannot run
    │   ├── KafkaSecurityError                            the broker refuses our security settings
    │   ├── TopicSetupError                               topics cannot be created or seen
    │   ├── CodecUnavailableError                         a Kafka compression codec cannot decode
    │   └── TrackingUnavailableError                      MLflow set but not usable
    ├── StoreError                                        a SQLite operation failed (rolled back)
    │   └── PredictionStoreError                          ... of the prediction log
    ├── DeadLetterError                                   the DLQ did not confirm (not committed)
    ├── RebuildError                                      taken-over partitions not replayed in time
    ├── CommandsSecretError                               the commands' signing secret is unusable
    ├── OperatorError                                     an operator action could not be done
    │   └── UnforcedPromotion                             promote on too few trial bars, no --force
    └── InvalidInput(CtdError, ValueError)                input rejected at the edge; never fatal
        ├── InvalidMessage                                a bars-topic message (goes to the DLQ)
        ├── InvalidCommand                                a commands-topic message (counted, logged)
        └── UnverifiedCommand                             a command failing signature, age or nonce

Errors of the other packages (``trainers.errors``, ``deploy.errors``, an invalid
symbol) keep their own hierarchies; the CLI maps the few it expects.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Final, Literal

from daemon.text import one_line

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2


class CtdError(Exception):
    """Base of every error the daemon raises on purpose; ``exit_code`` is the CLI's."""

    exit_code: ClassVar[int] = EXIT_FAILURE


class UsageError(CtdError):
    exit_code = EXIT_USAGE


class SettingsError(UsageError, ValueError):
    """Start-up configuration is invalid; the message names each bad setting."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))


class CsvFormatError(UsageError, ValueError):
    """A CSV file that is not valid OHLCV; names the file, the line and the problem."""

    def __init__(self, path: Path, problem: str, line: int | None = None) -> None:
        self.path, self.problem, self.line = path, problem, line
        where = f"{path}: line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


class NothingToReportError(UsageError, LookupError):
    """The registry holds nothing (of the kind asked for) for a symbol."""

    def __init__(self, symbol: str, problem: str) -> None:
        self.symbol, self.problem = symbol, problem
        super().__init__(f"{symbol}: {problem}")

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0])


class StartupError(CtdError):
    """The daemon cannot start; the message says why and what to check."""


class BrokerError(StartupError):
    """The local broker could not be found, started or reached."""


class KafkaSecurityError(StartupError):
    """The broker refuses the configured security settings (protocol or SASL mechanism)."""

    def __init__(self, address: str, cause: str) -> None:
        self.address, self.cause = address, cause
        super().__init__(f"Kafka broker {address} refuses this client's security settings: {cause}")


class TopicSetupError(StartupError):
    """Topics could not be created or did not become visible in metadata."""

    def __init__(self, topics: Sequence[str], cause: str) -> None:
        self.topics, self.cause = list(topics), cause
        super().__init__(f"cannot set up Kafka topics {', '.join(self.topics)}: {cause}")


class CodecUnavailableError(StartupError):
    """Some Kafka compression codecs cannot decode here; ``missing`` maps codec -> why."""

    def __init__(self, missing: Mapping[str, str], packages: Mapping[str, str]) -> None:
        self.missing = dict(missing)
        listed = "; ".join(
            f"{name} (needs package {packages[name]}: {why})" for name, why in missing.items()
        )
        super().__init__(
            f"Kafka compression codecs unavailable: {listed}. Producers may compress with any"
            " codec; reinstall ctd with its dependencies (pip install ctd)"
        )


class TrackingUnavailableError(StartupError):
    """``CTD_MLFLOW_TRACKING_URI`` is set but mlflow cannot be imported or set up."""

    def __init__(self, cause: str) -> None:
        self.cause = cause
        super().__init__(f"CTD_MLFLOW_TRACKING_URI is set but {cause}")


class StoreError(CtdError):
    """A store operation failed; the transaction, if any, was rolled back.

    ``disk_full`` tells ingest to pause and retry rather than dead-letter.
    """

    what: ClassVar[str] = "bar store"

    def __init__(self, path: Path, operation: str, cause: BaseException | str) -> None:
        self.path, self.operation = path, operation
        self.disk_full = getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        super().__init__(f"{self.what} {str(path)!r}: {operation} failed: {cause}")


class PredictionStoreError(StoreError):
    what = "prediction store"


class DeadLetterError(CtdError):
    """Rejected messages could not be confirmed on the DLQ; nothing of the batch was committed."""

    def __init__(self, topic: str, cause: BaseException) -> None:
        self.topic = topic
        super().__init__(f"cannot write to DLQ topic {topic!r}: {type(cause).__name__}: {cause}")


class RebuildError(CtdError):
    """Partitions taken over could not be replayed from Kafka within the time allowed; they
    stay unserved (paused) and the rebuild is tried again."""

    def __init__(self, partitions: Sequence[str]) -> None:
        self.partitions = list(partitions)
        super().__init__(f"rebuild of {', '.join(self.partitions)} did not finish in time")


class CommandsSecretError(CtdError):
    """The secret that signs operator commands is missing, too short or readable by others."""

    def __init__(self, where: str, problem: str) -> None:
        self.where, self.problem = where, problem
        super().__init__(f"commands secret {where}: {problem}")


class OperatorError(CtdError):
    """An operator action could not be carried out; the message says why."""


class UnforcedPromotion(OperatorError):
    """A promote of a shadow whose trial has fewer than ``min_samples`` paired bars, without
    ``--force``: too little live evidence to act on unless the operator says so."""

    def __init__(self, symbol: str, samples: int, min_samples: int) -> None:
        self.symbol, self.samples, self.min_samples = symbol, samples, min_samples
        super().__init__(
            f"{symbol}: the shadow's trial has {samples} paired bars, fewer than "
            f"promotion_min_samples {min_samples}; promote with --force to override"
        )


class InvalidInput(CtdError, ValueError):
    """Input rejected at the edge; ``reason`` is one printable line."""

    def __init__(self, reason: str) -> None:
        self.reason = one_line(reason)
        super().__init__(self.reason)


class InvalidMessage(InvalidInput):
    """A bars-topic message that cannot be stored (it goes to the DLQ with the reason)."""


class InvalidCommand(InvalidInput):
    """A command message that cannot be executed."""


RejectReason = Literal["unsigned", "bad_signature", "expired", "replayed"]
"""Why a command was refused before execution (``ctd_commands_rejected_total{reason}``)."""


class UnverifiedCommand(InvalidInput):
    """A command that is not provably a fresh one from a holder of the secret: no signature,
    a wrong one, a timestamp outside the skew window, or an id another record carried."""

    def __init__(self, why: RejectReason, reason: str) -> None:
        self.why = why
        super().__init__(f"{why}: {reason}")
