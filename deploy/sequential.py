# Over 400 lines: a 50-line docstring states the guarantee; the base both trial tests share
# and the accuracy test with its state checks read best together.
"""The shadow-vs-champion promotion test: paired, sequential, valid at every bar.

Both models predict the same bars. When bar t's label resolves, write
``X_t = shadow_correct - champion_correct`` (in {-1, 0, 1}); ``E[X_t]`` is the
shadow's accuracy advantage. The daemon asks for a decision after every bar, so
a fixed-sample test (McNemar, z-test) re-checked each time would promote a
no-better shadow far more often than ``alpha``. Instead each question is a
betting game whose wealth is a nonnegative supermartingale under its null
(a test supermartingale / e-process); by Ville's inequality its wealth ever
reaching ``1/alpha`` has probability at most ``alpha``, however often we look.

**Promote.** Null "shadow not better by more than ``min_effect`` = d":
``E[X_t | everything before bar t] <= d`` at every bar. For each bet fraction
``lam`` of a fixed grid ``0 < lam < 1/(1+d)`` the wealth
``prod_t (1 + lam * (X_t - d))`` has conditional mean factor ``<= 1`` under
that null; the e-value is the equal-weight average of the grid's wealths (a
discrete mixture, so no tuning and no look-ahead). PROMOTE when it reaches
``1/alpha`` at some bar ``min_samples <= n <= max_samples``.

*Guarantee:* under the null, P(PROMOTE at any bar) <= alpha, for any checking
schedule and any dependence across bars (regimes, autocorrelation), provided
each resolved bar is fed once, in order, and the null holds at every bar.

With ``d = 0`` concordant bars multiply wealth by 1, so the test only sees
discordant pairs and the mixture is the likelihood ratio of
P(shadow right | discordant) = (1 + lam)/2 against 1/2, averaged over ``lam``:
a mixture SPRT on McNemar's pairs. With ``d > 0`` concordant bars cost
``1 - lam*d`` each, so the null is a fixed accuracy margin, not a shifted
discordant-pair probability (which would depend on the unknown discordance).

**Reject early.** Null "shadow not worse": ``E[X_t | past] >= 0``; wealth
``prod_t (1 - lam * X_t)`` over the same grid. REJECT when it reaches
``1/alpha``: P(early REJECT of a shadow that is not worse) <= alpha. A trial
that reaches ``max_samples`` without promotion is also REJECTed ("not shown
better within budget"); that outcome carries no error guarantee.

**Log loss** is tracked as running means for dashboards only. Per-bar log-loss
differences are unbounded, and a betting test needs bounded increments;
clipping them would test a hypothesis about clipped losses instead. Decisions
use accuracy, which is what the label (direction of the next bar) measures.

**Elsewhere.** ``deploy.sequential_batch`` replays many trials at once (the same
decisions, vectorised); ``deploy.fdr`` bounds the share of wrong promotions
across all symbols (e-LOND) by testing PROMOTE at a level of its own, which may
change from bar to bar (``update(promote_alpha=...)``): whatever bar the test
stops at, the e-value there is still an e-value (optional stopping).
"""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from trainers.targets import DIRECTION, hit

STATE_VERSION: Final = 1

# Bet fractions (of the maximal safe bet), log-spaced so that every edge from
# ~1.5 to 45 points of P(shadow right | discordant) over 1/2 has a bet near its
# Kelly fraction 2p - 1. Averaging 16 bets costs at most ln 16 = 2.8 nats
# against the best of them; this grid beat finer/uniform ones on simulated power.
BET_GRID: Final = np.geomspace(1.0 / 32.0, 0.9, 16)
_LOG_GRID_SIZE: Final = math.log(BET_GRID.size)
PROBA_CLIP: Final = 1e-6
"""Probabilities are clipped to [PROBA_CLIP, 1 - PROBA_CLIP] before taking log losses."""
# Keeps reported e-values finite JSON numbers; decisions use log e-values.
_E_VALUE_CAP: Final = 1e300

FloatArray = npt.NDArray[np.float64]


class Decision(enum.Enum):
    CONTINUE = "continue"
    PROMOTE = "promote"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class PromotionTestConfig:
    """Settings of one shadow trial; a trial keeps the config it started with."""

    alpha: float = 0.05
    min_samples: int = 100
    max_samples: int = 2000
    min_effect: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, int | float) and 0.0 < self.alpha < 1.0):
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if not _is_int(self.min_samples) or self.min_samples < 1:
            raise ValueError(f"min_samples must be an integer >= 1, got {self.min_samples!r}")
        if not _is_int(self.max_samples) or self.max_samples < self.min_samples:
            raise ValueError(
                f"max_samples must be an integer >= min_samples ({self.min_samples}), "
                f"got {self.max_samples!r}"
            )
        if not (isinstance(self.min_effect, int | float) and 0.0 <= self.min_effect < 1.0):
            raise ValueError(f"min_effect must be in [0, 1), got {self.min_effect!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the test has seen so far; ``statistic`` is log10 of ``e_value_better``."""

    n: int
    champion_correct: int
    shadow_correct: int
    shadow_only: int
    champion_only: int
    e_value_better: float
    e_value_worse: float
    champion_accuracy: float | None
    shadow_accuracy: float | None
    champion_log_loss: float | None
    shadow_log_loss: float | None
    statistic: float
    # Mean (truncated) squared errors of a return trial (deploy.sequential_loss); ``loss``
    # names what the loss fields measure.
    champion_loss: float | None = None
    shadow_loss: float | None = None
    loss: str = "log_loss"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def log_e_values(
    n: npt.ArrayLike, shadow_only: npt.ArrayLike, champion_only: npt.ArrayLike, min_effect: float
) -> tuple[FloatArray, FloatArray]:
    """Natural-log e-values (better, worse) from the paired counts, elementwise.

    The wealth of every fixed bet depends only on the counts, so this is the
    whole state of both tests; the class and ``batch_decisions`` share it.
    """
    s = np.asarray(shadow_only, dtype=np.float64)[..., None]
    f = np.asarray(champion_only, dtype=np.float64)[..., None]
    z = np.asarray(n, dtype=np.float64)[..., None] - s - f
    lam = BET_GRID / (1.0 + min_effect)
    better = (
        s * np.log1p(lam * (1.0 - min_effect))
        + f * np.log1p(-lam * (1.0 + min_effect))
        + z * np.log1p(-lam * min_effect)
    )
    worse = s * np.log1p(-BET_GRID) + f * np.log1p(BET_GRID)
    return log_mean_exp(better), log_mean_exp(worse)


def log_mean_exp(x: FloatArray) -> FloatArray:
    """The log of the equal-weight mixture of the bets' wealths, from their logs (last axis)."""
    top = x.max(axis=-1, keepdims=True)
    total: FloatArray = np.log(np.exp(x - top).sum(axis=-1, keepdims=True)) + top
    result: FloatArray = total[..., 0] - _LOG_GRID_SIZE
    return result


def log_threshold(alpha: float) -> float:
    """The natural-log e-value at which a test at level ``alpha`` decides (Ville)."""
    return math.log(1.0 / alpha)


def decide(
    n: int,
    log_better: float,
    log_worse: float,
    config: PromotionTestConfig,
    promote_alpha: float | None,
) -> Decision:
    """The decision after ``n >= min_samples`` bars from the two log e-values: REJECT when
    "not worse" is refuted at ``alpha`` (checked first), PROMOTE when "not better" is at
    ``promote_alpha`` (default ``alpha``), REJECT at ``max_samples``, else CONTINUE."""
    threshold = log_threshold(config.alpha)
    promote_at = threshold if promote_alpha is None else log_threshold(promote_alpha)
    if log_worse >= threshold:
        return Decision.REJECT
    if log_better >= promote_at:
        return Decision.PROMOTE
    return Decision.REJECT if n >= config.max_samples else Decision.CONTINUE


def e_value(log_e: float) -> float:
    """A natural-log e-value as a finite number for reports (capped at 1e300)."""
    return min(math.exp(min(log_e, 700.0)), _E_VALUE_CAP)


class PairedTrial(abc.ABC):
    """What both trial tests share (``deploy.trial_test``): the config, the decision, the
    paired hit counts, and deciding from the two log e-values once ``min_samples`` are in.
    Subclasses keep their own evidence and give ``_log_e_values``."""

    __slots__ = (
        "_champion_correct",
        "_champion_only",
        "_config",
        "_decision",
        "_n",
        "_shadow_correct",
        "_shadow_only",
    )

    def __init__(self, config: PromotionTestConfig) -> None:
        self._config = config
        self._n = self._champion_correct = self._shadow_correct = 0
        self._shadow_only = self._champion_only = 0
        self._decision = Decision.CONTINUE

    @property
    def config(self) -> PromotionTestConfig:
        return self._config

    @property
    def decision(self) -> Decision:
        return self._decision

    @property
    def n(self) -> int:
        """Paired bars fed so far."""
        return self._n

    def _count(self, champion_hit: bool, shadow_hit: bool) -> None:
        c, s = bool(champion_hit), bool(shadow_hit)
        self._n += 1
        self._champion_correct += c
        self._shadow_correct += s
        self._shadow_only += s and not c
        self._champion_only += c and not s

    def _settle(self, promote_alpha: float | None) -> Decision:
        if self._n >= self._config.min_samples:
            self._decision = decide(self._n, *self._log_e_values(), self._config, promote_alpha)
        return self._decision

    def _evidence(
        self,
        champion_log_loss: float | None = None,
        shadow_log_loss: float | None = None,
        champion_loss: float | None = None,
        shadow_loss: float | None = None,
        loss: str = "log_loss",
    ) -> Evidence:
        """The shared counts, rates and e-values, with the subclass's loss fields."""
        better, worse = self._log_e_values()
        n = self._n
        return Evidence(
            n=n,
            champion_correct=self._champion_correct,
            shadow_correct=self._shadow_correct,
            shadow_only=self._shadow_only,
            champion_only=self._champion_only,
            e_value_better=e_value(better),
            e_value_worse=e_value(worse),
            champion_accuracy=self._champion_correct / n if n else None,
            shadow_accuracy=self._shadow_correct / n if n else None,
            champion_log_loss=champion_log_loss,
            shadow_log_loss=shadow_log_loss,
            statistic=better / math.log(10.0),
            champion_loss=champion_loss,
            shadow_loss=shadow_loss,
            loss=loss,
        )

    @abc.abstractmethod
    def _log_e_values(self) -> tuple[float, float]:
        """Natural-log e-values (better, worse) of the evidence so far."""


def check_promote_alpha(promote_alpha: float | None) -> None:
    """ValueError unless ``promote_alpha`` is None or in (0, 1)."""
    if promote_alpha is not None and not 0.0 < promote_alpha < 1.0:
        raise ValueError(f"promote_alpha must be in (0, 1), got {promote_alpha!r}")


class PairedSequentialTest(PairedTrial):
    """One symbol's shadow trial. ``update`` is O(1); state survives via ``to_dict``.

    Once the decision is PROMOTE or REJECT it is final: later updates are
    ignored and the evidence stays as it was at the deciding bar.
    """

    __slots__ = ("_champion_ll_sum", "_ll_n", "_shadow_ll_sum")

    def __init__(self, config: PromotionTestConfig) -> None:
        super().__init__(config)
        self._ll_n = 0
        self._champion_ll_sum = self._shadow_ll_sum = 0.0

    def update(
        self,
        champion_correct: bool,
        shadow_correct: bool,
        champion_log_loss: float | None = None,
        shadow_log_loss: float | None = None,
        *,
        promote_alpha: float | None = None,
    ) -> Decision:
        """Record one resolved bar and return the decision after it.

        Log losses are optional but must come together, finite and >= 0
        (clip probabilities before taking logs). ``promote_alpha``: the level
        PROMOTE is tested at on this bar (default ``config.alpha``; a fleet-wide
        procedure, ``deploy.fdr``, sets a lower one that may change from bar to
        bar); early REJECT always uses ``config.alpha``.
        """
        if self._decision is not Decision.CONTINUE:
            return self._decision
        check_promote_alpha(promote_alpha)
        if (champion_log_loss is None) != (shadow_log_loss is None):
            raise ValueError(
                "champion_log_loss and shadow_log_loss must be given together, got "
                f"{champion_log_loss!r} and {shadow_log_loss!r}"
            )
        if champion_log_loss is not None and shadow_log_loss is not None:
            _check_log_loss("champion_log_loss", champion_log_loss)
            _check_log_loss("shadow_log_loss", shadow_log_loss)
            self._ll_n += 1
            self._champion_ll_sum += float(champion_log_loss)
            self._shadow_ll_sum += float(shadow_log_loss)
        self._count(champion_correct, shadow_correct)
        # Both cannot cross at once (they need shadow_only > champion_only and the reverse).
        return self._settle(promote_alpha)

    def observe(
        self,
        champion_value: float,
        shadow_value: float,
        outcome: float,
        *,
        promote_alpha: float | None = None,
    ) -> Decision:
        """``update`` from both slots' P(up) and the bar's label (``deploy.trial_test``)."""
        return self.update(
            hit(DIRECTION, champion_value, outcome) is True,
            hit(DIRECTION, shadow_value, outcome) is True,
            log_loss(champion_value, outcome),
            log_loss(shadow_value, outcome),
            promote_alpha=promote_alpha,
        )

    def restarted(self) -> PairedSequentialTest:
        """A fresh test with the same config (``deploy.trial_test``)."""
        return PairedSequentialTest(self._config)

    def _log_e_values(self) -> tuple[float, float]:
        better, worse = log_e_values(
            self._n, self._shadow_only, self._champion_only, self._config.min_effect
        )
        return float(better), float(worse)

    @property
    def evidence(self) -> Evidence:
        ll_n = self._ll_n
        return self._evidence(
            champion_log_loss=self._champion_ll_sum / ll_n if ll_n else None,
            shadow_log_loss=self._shadow_ll_sum / ll_n if ll_n else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state; ``from_dict`` continues the trial exactly."""
        cfg = self._config
        return {
            "version": STATE_VERSION,
            "kind": "accuracy",
            "config": {
                "alpha": cfg.alpha,
                "min_samples": cfg.min_samples,
                "max_samples": cfg.max_samples,
                "min_effect": cfg.min_effect,
            },
            "n": self._n,
            "champion_correct": self._champion_correct,
            "shadow_correct": self._shadow_correct,
            "shadow_only": self._shadow_only,
            "champion_only": self._champion_only,
            "log_loss_n": self._ll_n,
            "champion_log_loss_sum": self._champion_ll_sum,
            "shadow_log_loss_sum": self._shadow_ll_sum,
            "decision": self._decision.value,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PairedSequentialTest:
        """Rebuild a trial from ``to_dict`` output; raise ValueError on a corrupt state."""
        if d.get("version") != STATE_VERSION:
            raise ValueError(
                f"promotion test state version must be {STATE_VERSION}, got {d.get('version')!r}"
            )
        try:
            test = cls(PromotionTestConfig(**d["config"]))
            counts = {
                key: d[key]
                for key in (
                    "n",
                    "champion_correct",
                    "shadow_correct",
                    "shadow_only",
                    "champion_only",
                    "log_loss_n",
                )
            }
            sums = (float(d["champion_log_loss_sum"]), float(d["shadow_log_loss_sum"]))
            decision = Decision(d["decision"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"promotion test state is incomplete or malformed: {exc!r}") from exc
        for key, value in counts.items():
            if not _is_int(value) or value < 0:
                raise ValueError(
                    f"promotion test state {key} must be an integer >= 0, got {value!r}"
                )
        n = counts["n"]
        consistent = (
            n <= test._config.max_samples
            and counts["log_loss_n"] <= n
            and counts["shadow_only"] <= counts["shadow_correct"] <= n
            and counts["champion_only"] <= counts["champion_correct"] <= n
            and counts["shadow_correct"] - counts["shadow_only"]
            == counts["champion_correct"] - counts["champion_only"]
        )
        if not consistent:
            raise ValueError(f"promotion test state counts are inconsistent: {counts}")
        test._n = n
        test._champion_correct = counts["champion_correct"]
        test._shadow_correct = counts["shadow_correct"]
        test._shadow_only = counts["shadow_only"]
        test._champion_only = counts["champion_only"]
        test._ll_n = counts["log_loss_n"]
        test._champion_ll_sum, test._shadow_ll_sum = sums
        test._decision = decision
        return test


def log_loss(proba_up: float, label: float) -> float:
    """Log loss of P(up) against a 0/1 label, probabilities clipped to [PROBA_CLIP,
    1 - PROBA_CLIP] so that a confident miss costs a finite amount."""
    p = min(max(proba_up, PROBA_CLIP), 1.0 - PROBA_CLIP)
    return -math.log(p if label == 1.0 else 1.0 - p)


def _check_log_loss(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
