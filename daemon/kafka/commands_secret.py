"""The key operator commands are signed with: ``CTD_COMMANDS_SECRET``, or a local file.

With the setting unset, the daemon generates 256 random bits once into
``<data_dir>/commands.secret`` (mode 0600, created exclusively: of a daemon and a CLI
racing, one file wins and both use it) and the CLI on the same machine reads it. A file
that others may read is refused rather than trusted: anyone who can read the key can
command the daemon.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Final

from daemon.errors import CommandsSecretError
from daemon.logs import get_logger
from daemon.settings import Settings
from deploy.durable import fsync_dir, make_dirs

MIN_LENGTH: Final = 16
"""Characters, as for the setting."""

_log = get_logger(component="commands")


def commands_key(settings: Settings, *, create: bool, shared: bool = False) -> bytes:
    """The HMAC key (the secret's UTF-8 bytes). ``create``: generate the file if it is missing
    (the daemon); without it (the CLI) a missing file is a CommandsSecretError. ``shared``:
    the registry is a fleet's, whose machines would each generate their own key, so the
    setting is required (CommandsSecretError)."""
    if settings.commands_secret is not None:
        return settings.commands_secret.get_secret_value().encode()
    if shared:
        raise CommandsSecretError(
            "CTD_COMMANDS_SECRET",
            "required with a shared registry (a fleet): every daemon, and the CLI on any "
            "machine, must sign and verify with the same secret",
        )
    path = settings.paths.commands_secret
    if create and not path.exists():
        _create(path)
    return _read(path)


def _create(path: Path) -> None:
    make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, (secrets.token_hex(32) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)  # create-only, unlike a rename: a racing creator's file stays
    except FileExistsError:
        return
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    _log.info("commands_secret_generated", path=str(path))


def _read(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except FileNotFoundError:
        raise CommandsSecretError(
            str(path),
            "missing: set CTD_COMMANDS_SECRET to the daemon's secret, or run on the daemon's "
            "machine with its CTD_DATA_DIR",
        ) from None
    except OSError as exc:
        raise CommandsSecretError(str(path), f"cannot be read: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CommandsSecretError(
            str(path), f"mode {stat.S_IMODE(mode):04o} lets others read it; chmod 600 it"
        )
    if len(text) < MIN_LENGTH:
        raise CommandsSecretError(str(path), f"shorter than {MIN_LENGTH} characters")
    return text.encode()
