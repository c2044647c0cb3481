"""The running daemon's collector policy (``daemon.cli.run.settle_heap``), in a fresh process:
it is process-wide, so it must not leak into the test process."""

from __future__ import annotations

import json
import subprocess
import sys

from daemon.cli.run import GC_THRESHOLDS

_PROBE = """
import gc, json
from daemon.cli.run import settle_heap
before = (gc.get_threshold(), gc.get_freeze_count())
settle_heap()
print(json.dumps([before, [gc.get_threshold(), gc.get_freeze_count()]]))
"""


def test_settle_heap_freezes_the_start_up_heap_and_raises_the_young_threshold() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    (threshold_before, frozen_before), (threshold_after, frozen_after) = json.loads(out)
    assert threshold_before == [700, 10, 10] and frozen_before == 0
    assert tuple(threshold_after) == GC_THRESHOLDS
    assert frozen_after > 10_000  # the modules and objects alive after start-up
