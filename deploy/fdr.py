"""Promotion across many symbols: a bound on the share of wrong promotions over the whole fleet.

One trial (``deploy.sequential``) promotes a shadow that is not better with
probability at most ``alpha``: a guarantee per symbol. Over a fleet of many
symbols, retrained again and again, that still promotes some no-better shadows;
the number an operator wants bounded is the false discovery rate, FDR = E[share
of wrong promotions among all promotions]. Two procedures here, both on
e-values (each trial's ``e_value_better`` at its deciding bar).

**e-LOND, the daemon's default** (``ELond``; Xu & Ramdas, "Online multiple
testing with e-values", AISTATS 2024, arXiv:2311.06412). Trials arrive over time
and each is watched bar by bar. Trial t (a fleet-wide index handed out in order
of trial start, ``deploy.registry.fleet_fdr``) PROMOTEs when its better
e-process reaches ``1/alpha_t``::

    alpha_t = min(alpha, alpha * gamma_t * (D + 1))

where D is the number of promotions of the procedure (discoveries) the fleet has
recorded when t decides, t not included. *Why FDR <= alpha, under any
dependence between symbols:* a discovery is recorded only after its promotion is
applied and is never taken back, so when t is promoted the final set R of
promotions has ``|R| >= D + 1``, and ``1{t in R} / |R| <= 1{e_t >= 1/alpha_t} /
(D + 1) <= alpha * gamma_t * e_t``. Summed over the trials whose shadow is not
better, ``FDR <= alpha * sum_t gamma_t * E[e_t] <= alpha``: ``sum gamma_t <= 1``,
and ``E[e_t] <= 1`` because e_t is an e-process stopped at a stopping time
(Ville / optional stopping), its null read against everything before each bar,
every symbol's bars included, so a D that moves with other symbols' decisions is
part of that past. (t itself is fixed before the trial's first bar counts, so
``E[gamma_t e_t] <= E[gamma_t]`` whatever order trials start in: a trial counts
no bar before it has its index.) A stale D (a cached copy, a discovery whose recording failed
or was cut off by a crash) only lowers alpha_t, so it stays valid; an overcount
would not, and is impossible (discoveries are a set of indices). The cap at
``alpha`` only lowers it too: a promotion under e-LOND always meets the
per-symbol level as well. Early REJECT ("shadow worse") is no discovery and
keeps ``alpha``. With trials of several ``alpha``, the bound is the largest.

**The sequence** (``gamma``; fixed before the first trial, recorded in fdr.json as
shape ``flat_then_log2`` with its H and rho)::

    gamma_t = (1 - rho) / H                                  for t <= H
    gamma_t = rho ln(H+1)^2 (1 / ln(t)^2 - 1 / ln(t+1)^2)    for t > H,  rho = 0.1

The tail telescopes: the sum over t > T >= H is ``rho (ln(H+1) / ln(T+1))^2``,
so the whole sums to exactly 1 (the tail to rho), and it is non-increasing in t.
The first H trials, about the number of symbols the fleet trades (its first
retraining round), share 90% of the budget evenly. The tail decays like
``2 rho ln(H+1)^2 / (t ln(t)^3)``, barely faster than 1/t: a daemon that runs
24/7 starts about H trials a day, and alpha_t ~ gamma_t D with D growing about
linearly in t, so a tail like 1/t^2 (this module's first sequence, ``rho H /
(t (t - 1))`` with rho = 0.05, spent 90% of its tail by t = 10 H) makes alpha_t
fall like 1/t, while this one falls like 1/ln(t)^3. Measured on the bench's
scenario (``bench/promotion_sim.py`` (d): 50 symbols, 10 shadows 5 points better,
ten and two hundred consecutive batches of one fleet, D carried over, 40 fleets),
power relative to the per-symbol rule, this sequence against the first: batch 1
0.81 vs 0.82 (1000 fleets; the goal is >= 0.80), trials 51-500 0.37 vs 0.32,
trials 501-1500 0.27 vs 0.18, trials 1501-10000 0.21 vs 0.09 (at H = 50 its gamma_t
is never below the first's past the horizon); FDR stays far below alpha
throughout. The 1/t^2 tail with rho = 0.1 is a little ahead over
trials 51-500 (0.39) and far behind after (0.12 over 1501-10000); heavier tails
(1/(t ln(t)^2), or the LORD++ default gamma of Javanmard & Montanari 2018 shifted
past H) lose trials 51-1500 and at best tie by trial 10000; a larger rho brings
batch 1 to the goal's edge (0.80 at rho = 0.15). Past the horizon a trial still
needs stronger evidence than in the first round unless discoveries have
accumulated: the price of a guarantee over an unbounded stream.

**e-BH** (``ebh``): a review of all symbols' e-values taken at one time.

``PerSymbol`` keeps each trial at ``alpha`` (no fleet-wide bound); ``open_policy``
builds the configured policy by name.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal, Protocol

import numpy as np
import numpy.typing as npt

from deploy.errors import RegistryCorrupt, RegistryError
from deploy.registry.fleet_fdr import GAMMA_SHAPE, FdrRecord, FleetFdr
from deploy.registry.storage import RegistryStorage

Policy = Literal["e_lond", "per_symbol"]
RHO: Final = 0.1
"""Share of the e-LOND budget left for the trials after the horizon."""
DEFAULT_HORIZON: Final = 50

FloatArray = npt.NDArray[np.float64]


# --- e-LOND's levels ------------------------------------------------------------------------


def gamma(index: npt.ArrayLike, horizon: int, rho: float = RHO) -> FloatArray:
    """gamma_t of test index t >= 1, elementwise (shape ``GAMMA_SHAPE``): ``(1 - rho) / H``
    over the horizon, then ``rho ln(H+1)^2 (1/ln(t)^2 - 1/ln(t+1)^2)``, a tail summing to
    ``rho``."""
    t = np.asarray(index, dtype=np.float64)
    if np.any(t < 1):
        raise ValueError(f"test indices start at 1, got {index!r}")
    after = np.maximum(t, horizon + 1.0)  # the tail's formula where it applies (t >= 2)
    a, b = np.log(after), np.log1p(after)  # ln t, ln(t + 1)
    # 1/a^2 - 1/b^2 = (b - a)(a + b) / (a b)^2, b - a = ln(1 + 1/t): no cancellation at any t
    tail = rho * math.log1p(horizon) ** 2 * np.log1p(1.0 / after) * (a + b) / (a * b) ** 2
    out: FloatArray = np.where(t <= horizon, (1.0 - rho) / horizon, tail)
    return out


def gamma_remainder(after: int, horizon: int, rho: float = RHO) -> float:
    """sum of gamma_t over t > ``after`` (>= 0), in closed form: the budget not yet handed
    out once indices 1..after have been."""
    if after < 0:
        raise ValueError(f"after must be >= 0, got {after!r}")
    if after <= horizon:
        return (1.0 - rho) * (horizon - after) / horizon + rho
    return rho * (math.log1p(horizon) / math.log1p(after)) ** 2


def e_lond_alpha(
    alpha: float,
    index: npt.ArrayLike,
    discoveries: npt.ArrayLike,
    horizon: int,
    rho: float = RHO,
) -> FloatArray:
    """alpha_t = min(alpha, alpha * gamma_t * (D + 1)), elementwise: the promote level of test
    ``index`` when ``discoveries`` (D) promotions of the procedure are known."""
    d = np.asarray(discoveries, dtype=np.float64)
    if np.any(d < 0):
        raise ValueError(f"discoveries must be >= 0, got {discoveries!r}")
    out: FloatArray = np.minimum(alpha, alpha * gamma(index, horizon, rho) * (d + 1.0))
    return out


@dataclass(frozen=True, slots=True)
class FdrLevel:
    """The e-LOND level a trial's PROMOTE is tested at: its test index, gamma_t, the
    discoveries D it was computed with, and ``alpha`` = alpha_t (promote at 1/alpha_t)."""

    index: int
    gamma: float
    discoveries: int
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FdrLevel:
        """Raise ValueError naming the field for a malformed level."""
        return cls(
            _count(d, "index", 1),
            _share(d, "gamma"),
            _count(d, "discoveries", 0),
            _share(d, "alpha"),
        )


def _count(d: Mapping[str, Any], key: str, least: int) -> int:
    value = d.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"fdr level {key} must be an integer >= {least}, got {value!r}")
    return value


def _share(d: Mapping[str, Any], key: str) -> float:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
        raise ValueError(f"fdr level {key} must be a number in (0, 1], got {value!r}")
    return float(value)


# --- policies -------------------------------------------------------------------------------


class PromotionPolicy(Protocol):
    """Sets the level each trial PROMOTEs at. ``deploy.live.LiveScorer`` asks once per batch.

    ``indexed``: trials need a test index (``claim``) before their bars count.
    """

    @property
    def name(self) -> Policy: ...

    @property
    def indexed(self) -> bool: ...

    def claim(self, alpha: float) -> FdrLevel | None:
        """A new trial's level, with a test index of its own. Raises OSError, RegistryError."""
        ...

    def level(self, current: FdrLevel | None, alpha: float) -> FdrLevel | None:
        """The level now for a trial at ``current`` (None: test at ``alpha``). No I/O."""
        ...

    def refresh(self) -> None:
        """Re-read the fleet's discoveries when the copy is old; write those not written yet.
        Raises OSError, RegistryError (the copy kept stays in use: it only undercounts)."""
        ...

    def discovered(self, level: FdrLevel) -> None:
        """Count the promotion of the trial at ``level``, after it was applied in the
        registry. Never raises: a failed write is retried by ``refresh``."""
        ...


class PerSymbol:
    """Every trial at its own ``alpha``: P(promote a no-better shadow) <= alpha per symbol."""

    name: Final = "per_symbol"
    indexed: Final = False

    def claim(self, alpha: float) -> FdrLevel | None:
        return None

    def level(self, current: FdrLevel | None, alpha: float) -> FdrLevel | None:
        return None

    def refresh(self) -> None:
        return None

    def discovered(self, level: FdrLevel) -> None:
        return None


class ELond:
    """e-LOND over the fleet's record (``FleetFdr``): FDR <= alpha across every symbol.

    D is a cached copy of the record, re-read at most every ``refresh_seconds``, plus
    the discoveries this process made and has not written yet. Thread-safe.
    """

    name: Final = "e_lond"
    indexed: Final = True

    def __init__(
        self,
        record: FleetFdr,
        *,
        refresh_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not refresh_seconds >= 0:
            raise ValueError(f"refresh_seconds must be >= 0, got {refresh_seconds}")
        if record.shape != GAMMA_SHAPE:
            raise ValueError(
                f"gamma computes shape {GAMMA_SHAPE!r}, the record has {record.shape!r}"
            )
        self.record = record
        self._refresh, self._clock = refresh_seconds, clock
        self._known: frozenset[int] = frozenset()
        self._unwritten: set[int] = set()
        self._read_at: float | None = None
        self._lock = threading.Lock()

    @property
    def discoveries(self) -> int:
        """D as this process knows it (never more than the fleet has made)."""
        with self._lock:
            return len(self._known | self._unwritten)

    def claim(self, alpha: float) -> FdrLevel:
        index, after = self.record.claim()
        self._remember(after)
        return self._level(index, alpha)

    def level(self, current: FdrLevel | None, alpha: float) -> FdrLevel | None:
        return None if current is None else self._level(current.index, alpha)

    def refresh(self) -> None:
        with self._lock:
            unwritten = set(self._unwritten)
            fresh = self._read_at is not None and self._clock() - self._read_at < self._refresh
        if unwritten:
            self._remember(self.record.discover(unwritten))
        elif not fresh:
            self._remember(self.record.read())

    def discovered(self, level: FdrLevel) -> None:
        with self._lock:
            self._unwritten.add(level.index)
        # On failure the index stays in _unwritten: counted here, written by the next refresh.
        with contextlib.suppress(OSError, RegistryError):
            self._remember(self.record.discover([level.index]))

    def _level(self, index: int, alpha: float) -> FdrLevel:
        d = self.discoveries
        g = float(gamma(index, self.record.horizon, self.record.rho))
        a = float(e_lond_alpha(alpha, index, d, self.record.horizon, self.record.rho))
        return FdrLevel(index, g, d, a)

    def _remember(self, record: FdrRecord) -> None:
        with self._lock:
            self._known = frozenset(record.discoveries)
            self._unwritten -= self._known
            self._read_at = self._clock()


@dataclass(frozen=True, slots=True)
class FdrConfig:
    """Which policy promotions follow; ``horizon`` is e-LOND's H."""

    policy: Policy = "e_lond"
    horizon: int = DEFAULT_HORIZON

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {self.policy!r}")
        if not isinstance(self.horizon, int) or isinstance(self.horizon, bool) or self.horizon < 1:
            raise ValueError(f"horizon must be an integer >= 1, got {self.horizon!r}")


def _e_lond(config: FdrConfig, storage: RegistryStorage, refresh_seconds: float) -> ELond:
    record = FleetFdr(storage, horizon=config.horizon, rho=RHO, shape=GAMMA_SHAPE)
    # A record that cannot be read now is reported by the trials' batches instead.
    with contextlib.suppress(OSError, RegistryCorrupt):
        record.read()  # FdrMismatch passes: the fleet runs its procedure with another sequence
    return ELond(record, refresh_seconds=refresh_seconds)


def _per_symbol(config: FdrConfig, storage: RegistryStorage, refresh_seconds: float) -> PerSymbol:
    return PerSymbol()


POLICIES: Final[Mapping[str, Callable[[FdrConfig, RegistryStorage, float], PromotionPolicy]]] = {
    "e_lond": _e_lond,
    "per_symbol": _per_symbol,
}
"""Policy name -> how to build it."""


def open_policy(
    config: FdrConfig, storage: RegistryStorage, *, refresh_seconds: float = 1.0
) -> PromotionPolicy:
    """The configured policy over the registry's storage (e-LOND keeps its record there).

    Raises FdrMismatch when the registry's e-LOND record was started with another gamma
    sequence: another horizon, or another rho or shape (an fdr.json of an earlier release,
    ``deploy.registry.fleet_fdr``).
    """
    return POLICIES[config.policy](config, storage, refresh_seconds)


# --- e-BH -----------------------------------------------------------------------------------


def ebh(e_values: Mapping[str, float], alpha: float) -> set[str]:
    """e-BH (Wang & Ramdas 2022): the symbols whose shadow promotion survives multiplicity.

    With K symbols and e-values sorted e_(1) >= e_(2) >= ..., select the k*
    largest where k* = max{k : e_(k) >= K / (alpha k)} (none if no k qualifies).

    *Guarantee:* if each e_i is an e-value (E[e_i] <= 1 when symbol i's shadow
    is not better), the expected share of wrong selections (FDR) is <= alpha
    under any dependence between symbols. Each trial's ``e_value_better`` at a
    stopping time is an e-value: a snapshot of all symbols taken at one review
    time (frozen at their decision bar for finished trials) is a valid input.
    Not covered: re-running e-BH after every bar and acting on whatever it ever
    selects (that picks the best moment after the fact). For decisions made
    over time, as the daemon makes them, e-LOND (above) is the procedure.
    """
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    for name, e in e_values.items():
        if not e >= 0.0:  # also catches NaN
            raise ValueError(f"e-value of {name!r} must be >= 0, got {e!r}")
    ranked = sorted(e_values.items(), key=lambda item: item[1], reverse=True)
    total = len(ranked)
    k_star = 0
    for k, (_, e) in enumerate(ranked, start=1):
        if e >= total / (alpha * k):
            k_star = k
    return {name for name, _ in ranked[:k_star]}
