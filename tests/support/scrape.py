"""A scraper in its own process, as Prometheus is: GET a URL over and over, timing each.

    python -m tests.support.scrape URL SECONDS

Fetches URL (a fresh connection each time, 10 s timeout) every 10 ms for SECONDS and prints
one JSON object: ``latencies`` (seconds, of the 200 answers) and ``failures`` (anything
else: a status, a reset, a timeout), each as its text.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request


def main(url: str, seconds: float) -> dict[str, list[object]]:
    latencies: list[object] = []
    failures: list[object] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                resp.read()
            latencies.append(time.perf_counter() - started)
        except (urllib.error.URLError, OSError) as exc:
            failures.append(repr(exc))
        time.sleep(0.01)
    return {"latencies": latencies, "failures": failures}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], float(sys.argv[2]))))
