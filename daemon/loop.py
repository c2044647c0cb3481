"""One background thread with a stop flag: the shape every daemon loop shares.

Subclasses name the thread and write ``_run``, which should return soon after
``self._stop`` is set (``while not self._stop.wait(tick)`` is the usual form).
"""

from __future__ import annotations

import threading
from typing import ClassVar, Self

from daemon.logs import get_logger

_log = get_logger(component="loop")


class Loop:
    """Start once, stop with a bounded join; a thread that outlives it is logged, not hidden."""

    thread_name: ClassVar[str]

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if not self.started:
            return
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            _log.warning("thread_not_stopped", thread=self._thread.name)

    def _run(self) -> None:
        raise NotImplementedError
