"""Disk full under the data directory: ingest pauses without committing, then catches up.

Two ways to fill the disk, one assertion: while the store cannot write, the
daemon reports the error, commits no offset and stores nothing; once space
returns it stores every bar exactly once and commits past them.

- ``tmpfs``: the data directory is a real 4 MiB tmpfs (mounting needs root;
  skipped otherwise), filled up with a file; the daemon is a child process and
  its log must name the cause.
- ``page_cap``: SQLite's own simulation of a full disk (``PRAGMA
  max_page_count`` on the daemon's connection), for machines where mounting is
  not allowed; the daemon runs in-process to reach its connection.

A read-only remount is not tested: Linux refuses to remount a filesystem
read-only while the daemon holds files open for writing (EBUSY), so the daemon
could never meet one; a store that cannot write fails the same way either way.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from daemon.app import Daemon
from daemon.kafka.bars import encode_bar, encode_batch
from daemon.settings import Settings
from tests.support import reliability as rel
from tests.support.helpers import wait_for
from trainers.data import BarRecord

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SYMBOL = "DISK"
FULL_ERRORS = 3  # retries that must all fail while the disk is full


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted under tmp_path (root only), unmounted at teardown."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount is None or umount is None:
        pytest.skip("no mount / umount command here")
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run([umount, str(mnt)], check=False)


def _fill(path: Path) -> None:
    """Write zeros to ``path`` until the filesystem is full (ENOSPC), to the last page."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def _send(settings: Settings, bars: list[BarRecord], *, batch: bool) -> dict[int, int]:
    """Produce bars (one batch message, or one message each); return next offset per partition."""
    assert settings.kafka_bootstrap_servers is not None
    producer = rel.make_producer(settings.kafka_bootstrap_servers)
    try:
        values = [encode_batch(SYMBOL, bars)] if batch else [encode_bar(b) for b in bars]
        futures = [producer.send(settings.topic_bars, key=SYMBOL.encode(), value=v) for v in values]
        ends: dict[int, int] = {}
        for f in futures:
            meta = f.get(timeout=30)
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        return ends
    finally:
        producer.close(timeout=5)


def _committed(settings: Settings) -> dict[int, int]:
    assert settings.kafka_bootstrap_servers is not None
    got = rel.committed_offsets(
        settings.kafka_bootstrap_servers, settings.kafka_group_id, settings.topic_bars
    )
    return {p: o for p, o in got.items() if o is not None}


def _exercise(
    settings: Settings,
    store_errors: Callable[[], float],
    fault_on: Callable[[], None],
    fault_off: Callable[[], None],
) -> None:
    """Before, during and after the fault; the assertions shared by both ways to fill the disk."""
    store = settings.paths.bars
    before = [rel.bar(SYMBOL, i) for i in range(20)]
    ends = _send(settings, before, batch=True)
    wait_for(lambda: rel.stored_count(store) == len(before), timeout=60, message="before stored")
    wait_for(lambda: _committed(settings) == ends, timeout=30, message="before committed")
    committed_before = dict(ends)

    fault_on()
    errors_before = store_errors()
    # One large transaction first: it cannot fit in pages SQLite already holds.
    during = [rel.bar(SYMBOL, i) for i in range(20, 2020)]
    tail = [rel.bar(SYMBOL, i) for i in range(2020, 2070)]
    for partition, end in _send(settings, during, batch=True).items():
        ends[partition] = max(ends.get(partition, 0), end)
    for partition, end in _send(settings, tail, batch=False).items():
        ends[partition] = max(ends.get(partition, 0), end)
    wait_for(
        lambda: store_errors() >= errors_before + FULL_ERRORS,
        timeout=30,
        message=f"{FULL_ERRORS} failed store attempts",
    )
    assert rel.stored_count(store) == len(before)  # nothing half-written
    assert _committed(settings) == committed_before  # no offset moved past unstored bars

    fault_off()
    produced = before + during + tail
    wait_for(lambda: rel.stored_count(store) == len(produced), timeout=60, message="caught up")
    wait_for(lambda: _committed(settings) == ends, timeout=30, message="all committed")
    rel.assert_stored_exactly(store, produced)


def test_full_tmpfs_pauses_ingest_without_commits_and_it_recovers(
    settings_factory: Callable[..., Settings], tmpfs: Path, tmp_path: Path
) -> None:
    """On a really full filesystem the daemon logs a disk-full store error, commits nothing,
    and stores everything exactly once when space returns."""
    settings = settings_factory(
        data_dir=tmpfs / "data", http_port=rel.free_port(), min_bars=100_000, log_format="json"
    )
    log = tmp_path / "daemon.log"
    daemon = rel.DaemonProcess(settings, log, runner_args=[])
    filler = tmpfs / "filler"
    try:
        daemon.start()
        _exercise(
            settings,
            lambda: daemon.sample("ctd_ingest_errors_total", kind="store") or 0.0,
            lambda: _fill(filler),
            filler.unlink,
        )
        assert daemon.alive()
        assert daemon.terminate() == 0, daemon.log_tail()
    finally:
        daemon.reap_group()
    text = log.read_text()
    assert "ingest_store_error" in text and "database or disk is full" in text


def test_sqlite_page_cap_pauses_ingest_without_commits_and_it_recovers(
    settings_factory: Callable[..., Settings],
) -> None:
    """SQLITE_FULL from a page cap on the daemon's store connection: the same pause, no commit,
    and recovery, where no tmpfs can be mounted."""
    settings = settings_factory(http_port=0, min_bars=100_000)
    daemon = Daemon(
        settings,
        bootstrap_servers=settings.kafka_bootstrap_servers or "",
        metrics_registry=CollectorRegistry(),
    ).start()
    assert daemon.store is not None
    store = daemon.store

    def cap(pages: int | None) -> None:
        with store._connection("test page cap") as conn:
            if pages is None:
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages}")

    try:
        _exercise(
            settings,
            lambda: (
                daemon.metrics.registry.get_sample_value(
                    "ctd_ingest_errors_total", {"kind": "store"}
                )
                or 0.0
            ),
            lambda: cap(None),
            lambda: cap(1_073_741_823),
        )
    finally:
        daemon.stop(10)
