"""Live champion monitors: performance decay, staleness, and the retrain cooldown.

Pure logic fed by the daemon: resolved outcomes, ages and bar counts in,
frozen reports out (for gauges, logs and the ledger). Drift lives in
``monitors.drift``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from scipy.special import bdtr


@dataclass(frozen=True, slots=True)
class DecayReport:
    """Rolling live accuracy vs the accuracy the model promised, and the test's verdict."""

    n_samples: int
    n_correct: int
    live_accuracy: float
    expected_accuracy: float
    tolerance: float
    p_value: float
    level: float  # per-check significance level: alpha / window
    decayed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DecayMonitor:
    """Fires when the champion's rolling live accuracy is significantly below its test accuracy.

    Test: one-sided exact binomial, H0 "live accuracy >= expected_accuracy -
    tolerance", on the last ``window`` resolved predictions, once at least
    ``min_samples`` are in. It runs after every outcome on overlapping
    windows, so each check uses level ``alpha / window``: by the union bound,
    the chance of a false fire within any ``window`` consecutive outcomes of an
    unchanged process is at most ``alpha`` (simulated: about 1% of unchanged
    5,000-outcome runs fire at the defaults). At the defaults a 10-point drop
    (0.58 -> 0.48) fires after a median of ~330 outcomes (90% within ~970); a
    flipped signal (0.63 -> 0.37) within ~240.

    ``tolerance`` absorbs optimism in ``expected_accuracy``: a test accuracy
    that helped choose the model overstates it by a point or two, and with
    tolerance 0 a 2-point overstatement makes ~8% of unchanged 5,000-outcome
    runs fire.
    """

    def __init__(
        self,
        expected_accuracy: float,
        window: int = 300,
        min_samples: int = 100,
        alpha: float = 0.01,
        tolerance: float = 0.0,
    ) -> None:
        if not (math.isfinite(expected_accuracy) and 0.0 <= expected_accuracy <= 1.0):
            raise ValueError(f"expected_accuracy must be in [0, 1], got {expected_accuracy}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not 1 <= min_samples <= window:
            raise ValueError(f"min_samples must be in [1, window={window}], got {min_samples}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if not (math.isfinite(tolerance) and 0.0 <= tolerance < 1.0):
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
        self.expected_accuracy = expected_accuracy
        self.window = window
        self.min_samples = min_samples
        self.alpha = alpha
        self.tolerance = tolerance
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._correct = 0

    def update(self, correct: bool) -> DecayReport | None:
        """Add one resolved prediction; the report once ``min_samples`` are in, else None."""
        if len(self._outcomes) == self.window and self._outcomes[0]:
            self._correct -= 1  # the oldest outcome leaves the window
        self._outcomes.append(bool(correct))
        self._correct += bool(correct)
        n = len(self._outcomes)
        if n < self.min_samples:
            return None
        floor = max(self.expected_accuracy - self.tolerance, 0.0)
        p_value = float(bdtr(self._correct, n, floor))  # binomial CDF, P(X <= correct)
        level = self.alpha / self.window
        return DecayReport(
            n_samples=n,
            n_correct=self._correct,
            live_accuracy=self._correct / n,
            expected_accuracy=self.expected_accuracy,
            tolerance=self.tolerance,
            p_value=p_value,
            level=level,
            decayed=p_value <= level,
        )


@dataclass(frozen=True, slots=True)
class StalenessReport:
    """Model age and bars since training against their limits; ``reason`` says why stale."""

    age_seconds: float
    bars_since_training: int
    max_age_seconds: float | None
    max_bars_since_training: int | None
    stale: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StalenessMonitor:
    """A model is stale when its age or the bars seen since training exceed a limit.

    Strictly above: a model exactly at a limit is still fresh. ``None``
    disables a limit.
    """

    def __init__(
        self, max_age_seconds: float | None = None, max_bars_since_training: int | None = None
    ) -> None:
        if max_age_seconds is not None and not (
            math.isfinite(max_age_seconds) and max_age_seconds > 0
        ):
            raise ValueError(f"max_age_seconds must be finite and > 0, got {max_age_seconds}")
        if max_bars_since_training is not None and max_bars_since_training < 1:
            raise ValueError(f"max_bars_since_training must be >= 1, got {max_bars_since_training}")
        self.max_age_seconds = max_age_seconds
        self.max_bars_since_training = max_bars_since_training

    def check(self, age_seconds: float, bars_since_training: int) -> StalenessReport:
        """Judge one model; ValueError for a negative or non-finite age or bar count."""
        if not (math.isfinite(age_seconds) and age_seconds >= 0):
            raise ValueError(f"age_seconds must be finite and >= 0, got {age_seconds}")
        if bars_since_training < 0:
            raise ValueError(f"bars_since_training must be >= 0, got {bars_since_training}")
        reasons = []
        if self.max_age_seconds is not None and age_seconds > self.max_age_seconds:
            reasons.append(f"model age {age_seconds:.0f}s exceeds {self.max_age_seconds:.0f}s")
        limit = self.max_bars_since_training
        if limit is not None and bars_since_training > limit:
            reasons.append(f"{bars_since_training} bars since training exceed {limit}")
        return StalenessReport(
            age_seconds=age_seconds,
            bars_since_training=bars_since_training,
            max_age_seconds=self.max_age_seconds,
            max_bars_since_training=limit,
            stale=bool(reasons),
            reason="; ".join(reasons) if reasons else "fresh",
        )


class Cooldown:
    """At most one trigger per ``seconds``: drift or decay must not cause a retrain storm.

    Keep one per symbol. ``allow()`` says whether a trigger may fire now and,
    if so, records it; a trigger exactly ``seconds`` after the last is allowed.
    ``clock`` is injectable for tests; the default is monotonic.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"cooldown seconds must be finite and >= 0, got {seconds}")
        self.seconds = seconds
        self._clock = clock
        self._last: float | None = None

    @property
    def last_trigger(self) -> float | None:
        """Clock time of the last allowed trigger, None before the first."""
        return self._last

    def remaining(self) -> float:
        """Seconds until the next trigger would be allowed (0 when it would be now)."""
        if self._last is None:
            return 0.0
        return max(0.0, self._last + self.seconds - self._clock())

    def allow(self) -> bool:
        """True (and the trigger is recorded) unless the last one was under ``seconds`` ago."""
        now = self._clock()
        if self._last is not None and now - self._last < self.seconds:
            return False
        self._last = now
        return True
