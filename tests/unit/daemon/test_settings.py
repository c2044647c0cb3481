"""Settings: defaults, sources, and errors that name the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.errors import SettingsError
from daemon.settings import load_settings


def test_defaults_match_the_design_names() -> None:
    """Defaults are the operator-facing names and values of DESIGN.md."""
    s = load_settings()
    assert s.kafka_bootstrap_servers is None
    assert (s.http_host, s.http_port) == ("127.0.0.1", 9108)
    assert s.data_dir == Path("./ctd-data")
    assert s.paths.registry == Path("./ctd-data/registry")
    assert (s.topic_bars, s.topic_dlq, s.topic_commands, s.topic_promotions) == (
        "ctd.bars",
        "ctd.bars.dlq",
        "ctd.commands",
        "ctd.promotions",
    )
    assert s.kafka_group_id == "ctd"


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """CTD_* variables set fields; lists accept a comma-separated form."""
    monkeypatch.setenv("CTD_HTTP_PORT", "9200")
    monkeypatch.setenv("CTD_TRAINERS", "xgboost, naive")
    s = load_settings()
    assert s.http_port == 9200
    assert s.trainers == ("xgboost", "naive")


def test_toml_file_is_read_below_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TOML file named by CTD_CONFIG_FILE sets values; the environment wins over it."""
    cfg = tmp_path / "ctd.toml"
    cfg.write_text('min_bars = 800\nhttp_port = 9300\ntrainers = ["naive"]\n')
    monkeypatch.setenv("CTD_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("CTD_HTTP_PORT", "9400")
    s = load_settings()
    assert (s.min_bars, s.http_port, s.trainers) == (800, 9400, ("naive",))


def test_missing_toml_file_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CTD_CONFIG_FILE that does not exist fails naming the setting."""
    monkeypatch.setenv("CTD_CONFIG_FILE", "/nonexistent/ctd.toml")
    with pytest.raises(SettingsError, match="CTD_CONFIG_FILE"):
        load_settings()


def test_a_config_file_that_is_not_toml_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A YAML file given as CTD_CONFIG_FILE fails naming the setting and the line, no traceback."""
    cfg = tmp_path / "ctd.yaml"
    cfg.write_text("min_bars: 800\nhttp_port: 9300\n")
    monkeypatch.setenv("CTD_CONFIG_FILE", str(cfg))
    with pytest.raises(SettingsError, match=r"CTD_CONFIG_FILE: .* is not valid TOML .*line 1"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CTD_TRAIN_WORKERS", "0"),
        ("CTD_HTTP_PORT", "not-a-port"),
        ("CTD_HTTP_PORT", "70000"),
        ("CTD_MIN_BARS", "-1"),
        ("CTD_DEMO_SYMBOLS", "../etc"),
        ("CTD_LOG_FORMAT", "xml"),
        ("CTD_TRAINERS", ""),
        ("CTD_TRAINERS", "xgboost,nope"),
        ("CTD_WALK_FORWARD_FOLDS", "1"),
        ("CTD_RETRAIN_CRON", "not a cron"),
        ("CTD_WEBHOOK_URL", "ftp://example"),
        ("CTD_TRAINER_PARAMS", '{"mlp": {"preset": "deep"}}'),
        ("CTD_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),  # SASL without a mechanism
        ("CTD_KAFKA_SASL_MECHANISM", "PLAIN"),  # a mechanism without SASL
        ("CTD_BUNDLED_BROKER_STORAGE", "file:///var/tansu"),  # not a tansu storage engine
        ("CTD_MAX_FUTURE_SKEW_SECONDS", "-1"),
        ("CTD_MAX_JUMP_RATIO", "1"),  # every move would be a jump
        ("CTD_MAX_SYMBOLS", "0"),
        ("CTD_TARGET", "price"),
        ("CTD_HORIZON_BARS", "0"),
        ("CTD_SIGNAL_RETURN_THRESHOLD", "-0.01"),
    ],
)
def test_bad_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """Each invalid value raises SettingsError whose message names the environment variable."""
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert name in str(info.value)


def test_unknown_override_is_rejected() -> None:
    """A misspelt setting fails instead of being silently ignored."""
    with pytest.raises(SettingsError, match="CTD_MIN_BAR"):
        load_settings(min_bar=10)


def test_secret_value_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A password appears neither in the settings repr nor in a validation error."""
    s = load_settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="u",
        kafka_sasl_password="hunter2",
    )
    assert "hunter2" not in repr(s)
    with pytest.raises(SettingsError) as info:
        load_settings(kafka_sasl_password=12345)
    assert "12345" not in str(info.value)


def test_ctd_run_with_invalid_setting_exits_nonzero_naming_it(tmp_path: Path) -> None:
    """`ctd run` refuses to start on a bad setting, exit code 2, the setting named on stderr."""
    env = {**os.environ, "CTD_TRAIN_WORKERS": "0", "CTD_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "CTD_TRAIN_WORKERS" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_training_monitor_thresholds_are_settings_recorded_in_the_run_config(
    tmp_path: Path,
) -> None:
    """CTD_TRAINING_MONITOR overrides MonitorConfig fields; they reach the recorded config (and
    its hash); an unknown key or a bad value fails naming the setting and the key."""
    from trainers.repro import config_sha256

    default = load_settings(data_dir=tmp_path).train_config
    tuned = load_settings(data_dir=tmp_path, training_monitor={"divergence_factor": 5}).train_config
    assert tuned.monitor.divergence_factor == 5
    assert tuned.to_dict()["monitor"]["divergence_factor"] == 5
    assert config_sha256(tuned.to_dict()) != config_sha256(default.to_dict())
    unknown = r"CTD_TRAINING_MONITOR: .*unknown key\(s\) \['diverge'\]"
    with pytest.raises(SettingsError, match=unknown):
        load_settings(data_dir=tmp_path, training_monitor={"diverge": 5})
    bad = r"CTD_TRAINING_MONITOR: .*divergence_factor must be > 1"
    with pytest.raises(SettingsError, match=bad):
        load_settings(data_dir=tmp_path, training_monitor={"divergence_factor": 0.5})


@pytest.mark.parametrize(
    ("prefix", "config"), [("gate_", "gate_config"), ("promotion_", "promotion_config")]
)
def test_every_prefixed_setting_reaches_its_config(prefix: str, config: str) -> None:
    """A ``gate_x`` or ``promotion_x`` setting its config does not read is silently ignored.
    (``promotion_fdr*``, the policy across symbols, build ``promotion_fdr_config``:
    tests/unit/deploy/test_fdr.py.)"""
    defaults = load_settings()
    fields = type(defaults).model_fields
    names = [n for n in fields if n.startswith(prefix) and not n.startswith("promotion_fdr")]
    assert names
    for name in names:
        value = getattr(defaults, name)
        changed = _another(value)
        assert changed != value, name
        built = getattr(load_settings(**{name: changed}), config)
        assert getattr(built, name.removeprefix(prefix)) == changed, name


def _another(value: object) -> object:
    """A valid value for a gate or promotion setting that differs from ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value // 2
    if isinstance(value, float):
        return value / 2 if value else 0.1
    return 0.5


def test_train_config_carries_every_training_setting() -> None:
    """Each TrainConfig field comes from the setting of the same name, or from gates/monitor."""
    settings = load_settings(
        trainers=("naive",),
        seed=7,
        val_fraction=0.2,
        test_fraction=0.25,
        trainer_params={"naive": {"x": 1}},
        walk_forward_folds=0,
        augment=True,
        gate_min_test_rows=9,
        training_monitor={"divergence_factor": 5},
    )
    config = settings.train_config
    assert (config.trainers, config.seed, config.val_fraction, config.test_fraction) == (
        ("naive",),
        7,
        0.2,
        0.25,
    )
    assert (config.trainer_params, config.walk_forward_folds, config.augment) == (
        {"naive": {"x": 1}},
        0,
        True,
    )
    assert config.gates == settings.gate_config and config.gates.min_test_rows == 9
    assert config.monitor.divergence_factor == 5


def test_the_mlflow_registry_mirror_needs_the_tracking_uri_and_a_usable_prefix() -> None:
    """The mirror is off by default; turned on without CTD_MLFLOW_TRACKING_URI it fails naming
    both settings, and a prefix MLflow cannot put in a model name fails naming the prefix."""
    s = load_settings()
    assert (s.mlflow_registry_mirror, s.mlflow_model_prefix) == (False, "ctd-")
    with pytest.raises(SettingsError, match=r"CTD_MLFLOW_REGISTRY_MIRROR: .*mlflow_tracking_uri"):
        load_settings(mlflow_registry_mirror=True)
    with pytest.raises(SettingsError, match="CTD_MLFLOW_MODEL_PREFIX"):
        load_settings(mlflow_model_prefix="ctd/'")
    s = load_settings(mlflow_registry_mirror=True, mlflow_tracking_uri="http://127.0.0.1:5000")
    assert s.mlflow_registry_mirror and s.mlflow_model_prefix == "ctd-"


def test_target_and_horizon_reach_every_training_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """CTD_TARGET / CTD_HORIZON_BARS become the workers' TrainConfig (``ctd train``, ``ctd
    tune``, the daemon's retrains and the backtest all read ``train_config``)."""
    monkeypatch.setenv("CTD_TARGET", "return")
    monkeypatch.setenv("CTD_HORIZON_BARS", "5")
    config = load_settings().train_config
    assert (config.target, config.horizon_bars) == ("return", 5)
    assert (load_settings(target="direction").train_config.target) == "direction"
