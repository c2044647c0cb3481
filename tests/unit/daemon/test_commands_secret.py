"""The commands' signing secret: the setting, or one file generated once with mode 0600."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from daemon.errors import CommandsSecretError, SettingsError
from daemon.kafka.commands_secret import commands_key
from daemon.settings import Settings, load_settings


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return load_settings(data_dir=tmp_path / "data", **overrides)


def test_the_setting_wins_and_no_file_is_written(tmp_path: Path) -> None:
    settings = _settings(tmp_path, commands_secret="s" * 20)
    assert commands_key(settings, create=True) == b"s" * 20
    assert not settings.paths.commands_secret.exists()


def test_the_daemon_generates_a_private_file_once_and_the_cli_reads_the_same_key(
    tmp_path: Path,
) -> None:
    """The first call creates a 0600 file of 256 random bits; later calls, with or without
    create, return the same key."""
    settings = _settings(tmp_path)
    key = commands_key(settings, create=True)
    path = settings.paths.commands_secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) == 64 and int(key, 16) >= 0
    assert commands_key(settings, create=True) == key
    assert commands_key(settings, create=False) == key
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_an_existing_file_is_never_replaced(tmp_path: Path) -> None:
    """A file made by a racing daemon or CLI (or by ops) is the one used."""
    settings = _settings(tmp_path)
    path = settings.paths.commands_secret
    path.parent.mkdir(parents=True)
    path.write_text("operator-chosen-secret-value\n")
    path.chmod(0o600)
    assert commands_key(settings, create=True) == b"operator-chosen-secret-value"


def test_the_cli_without_a_secret_fails_naming_what_to_set(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(CommandsSecretError, match="CTD_COMMANDS_SECRET"):
        commands_key(settings, create=False)
    assert not settings.paths.commands_secret.exists()


@pytest.mark.parametrize(("mode", "content"), [(0o640, "x" * 64), (0o600, "short")])
def test_a_readable_by_others_or_short_file_is_refused(
    tmp_path: Path, mode: int, content: str
) -> None:
    settings = _settings(tmp_path)
    path = settings.paths.commands_secret
    path.parent.mkdir(parents=True)
    path.write_text(content)
    path.chmod(mode)
    with pytest.raises(CommandsSecretError, match=str(path)):
        commands_key(settings, create=True)


def test_a_short_secret_setting_is_refused_without_showing_it(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        _settings(tmp_path, commands_secret="hunter2-hunter2")
    assert "CTD_COMMANDS_SECRET" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_a_shared_registry_needs_the_secret_setting(tmp_path: Path) -> None:
    """A fleet's daemons and CLIs on other machines can only agree on a secret they are given:
    with a shared registry no file is generated."""
    settings = _settings(tmp_path)
    with pytest.raises(CommandsSecretError, match="CTD_COMMANDS_SECRET: required with a shared"):
        commands_key(settings, create=True, shared=True)
    assert not settings.paths.commands_secret.exists()
    given = _settings(tmp_path, commands_secret="k" * 32)
    assert commands_key(given, create=True, shared=True) == b"k" * 32
