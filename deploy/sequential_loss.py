"""The promotion test of return-target models: paired truncated squared errors.

A return model predicts a forward log return, and how far off it is matters, not
only its sign, so its trial tests the loss differential. Squared-error differences
are unbounded and a betting e-process needs bounded increments, so each error
``e = prediction - realised`` is truncated at a ``cap`` fixed when the trial starts
(``loss_cap``), and with ``loss = min(e**2, cap**2)``

    x_t = (loss_champion - loss_shadow) / cap**2  in [-1, 1]  (> 0: shadow better).

Fixed before any outcome is seen, the cap makes ``x_t`` a fixed function of each
bar's errors, so ``deploy.sequential``'s bets, mixtures, decision rules and
guarantee (Ville: valid at every bar, under any dependence) carry over unchanged;
a cap taken from the trial's own errors would void them.

**The hypothesis is about the truncated loss.** PROMOTE's null is ``E[x_t | past]
<= d`` at every bar: the shadow's expected truncated squared error is not below the
champion's by more than ``d * cap**2`` (``min_effect`` = d is a fraction of cap^2
here, not accuracy points). An error past the cap costs what one at the cap does:
the loss is robust to outliers and blind to how far past the cap a blunder lands
(rare at ``CAP_RMSE_MULTIPLE`` test RMSEs; the constant's comment weighs it).

Sign hits are counted for the evidence only; the caller decides them (``observe``
uses ``trainers.targets.hit``: a zero realised return is a hit for neither model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Final

import numpy as np

from deploy.sequential import (
    BET_GRID,
    Decision,
    Evidence,
    FloatArray,
    PairedTrial,
    PromotionTestConfig,
    check_promote_alpha,
    log_mean_exp,
)
from trainers.targets import RETURN, hit

KIND: Final = "squared_error"
STATE_VERSION: Final = 1

# The cap in test RMSEs (the larger of the two). Simulated, 300 trials of 2,000 bars per
# cell, alpha 0.05: a lower cap lets the test bet harder (bets are bounded by |x| <= 1)
# but hides large errors. PROMOTE rate of a better shadow at k = 2 / 3 / 4 / 5: errors
# 10% smaller, Gaussian 0.98 / 0.99 / 0.99 / 0.99, Student-t(4) 0.78 / 0.70 / 0.59 /
# 0.50; errors sharing the realised return, MSE 10% lower, 0.97 / 0.96 / 0.90 / 0.71. A
# blunderer (errors 20% smaller but 8 sd off on 2% of bars: MSE 1.9x the champion's)
# whose test RMSE missed the blunders: 1.00 / 0.95 / 0.07 / 0.00. 4 keeps most of the
# power and turns the blunderer away; Gaussian errors almost never reach 4 RMSE, so
# there the truncated loss is the squared error.
CAP_RMSE_MULTIPLE: Final = 4.0


def loss_cap(
    champion_rmse: float | None,
    shadow_rmse: float | None,
    realised: FloatArray | None = None,
) -> float:
    """The truncation cap of a new trial: ``CAP_RMSE_MULTIPLE`` x the larger test RMSE.

    An RMSE that is None, not finite or <= 0 counts as unknown. With neither known,
    the standard deviation of the recent ``realised`` returns stands in (the RMSE of
    predicting 0, which return models barely beat). Raises ValueError when neither
    gives a positive scale.
    """
    known = [
        float(r)
        for r in (champion_rmse, shadow_rmse)
        if r is not None and math.isfinite(r) and r > 0
    ]
    if known:
        return CAP_RMSE_MULTIPLE * max(known)
    moves = np.asarray([] if realised is None else realised, dtype=np.float64).ravel()
    moves = moves[np.isfinite(moves)]
    # Equal moves would give a rounding-error sd, not 0.
    scale = float(np.std(moves, ddof=1)) if moves.size > 1 and moves.max() > moves.min() else 0.0
    if scale > 0.0:
        return CAP_RMSE_MULTIPLE * scale
    raise ValueError(
        "a loss cap needs a finite RMSE > 0 of either model or varying realised returns, got "
        f"champion_rmse={champion_rmse!r}, shadow_rmse={shadow_rmse!r} and "
        f"{moves.size} finite realised returns"
    )


class PairedLossTest(PairedTrial):
    """One symbol's return-model trial; ``PairedSequentialTest``'s surface and rules.

    ``update`` is O(1): the state is the log wealth of every bet of the grid (two
    arrays), the counts, and the loss sums. Once decided, later updates are ignored.
    """

    __slots__ = (
        "_cap",
        "_champion_loss_sum",
        "_lam_better",
        "_log_better",
        "_log_worse",
        "_shadow_loss_sum",
    )

    def __init__(self, config: PromotionTestConfig, cap: float) -> None:
        if isinstance(cap, bool) or not (isinstance(cap, int | float) and 0 < cap < math.inf):
            raise ValueError(f"cap must be finite and > 0, got {cap!r}")
        super().__init__(config)
        self._cap = float(cap)
        # Largest bet 0.9 / (1 + d): wealth factors stay >= 0.1 for x - d >= -(1 + d).
        self._lam_better: FloatArray = BET_GRID / (1.0 + config.min_effect)
        self._log_better: FloatArray = np.zeros(BET_GRID.size)
        self._log_worse: FloatArray = np.zeros(BET_GRID.size)
        self._champion_loss_sum = self._shadow_loss_sum = 0.0

    @property
    def cap(self) -> float:
        """Errors are truncated at this absolute size (log-return units)."""
        return self._cap

    def update(
        self,
        champion_error: float,
        shadow_error: float,
        champion_hit: bool,
        shadow_hit: bool,
        *,
        promote_alpha: float | None = None,
    ) -> Decision:
        """Record one resolved bar (errors = prediction - realised) and return the decision.

        ``promote_alpha`` as in ``PairedSequentialTest.update``. Raises ValueError for a
        non-finite error or a ``promote_alpha`` outside (0, 1).
        """
        if self._decision is not Decision.CONTINUE:
            return self._decision
        check_promote_alpha(promote_alpha)
        for name, error in (("champion_error", champion_error), ("shadow_error", shadow_error)):
            if not math.isfinite(error):
                raise ValueError(f"{name} must be finite, got {error!r}")
        ce, se, cap2 = float(champion_error), float(shadow_error), self._cap * self._cap
        champion_loss, shadow_loss = min(ce * ce, cap2), min(se * se, cap2)
        x = (champion_loss - shadow_loss) / cap2
        # New arrays, not in place: the live path updates a shallow copy and keeps the
        # original when its commit fails.
        self._log_better = self._log_better + np.log1p(
            self._lam_better * (x - self._config.min_effect)
        )
        self._log_worse = self._log_worse + np.log1p(-BET_GRID * x)
        self._count(champion_hit, shadow_hit)
        self._champion_loss_sum += champion_loss
        self._shadow_loss_sum += shadow_loss
        # Both cannot cross at once: log(1 + y) <= y, so PROMOTE needs sum(x) > n*d >= 0
        # and REJECT needs sum(x) < 0.
        return self._settle(promote_alpha)

    def observe(
        self,
        champion_value: float,
        shadow_value: float,
        outcome: float,
        *,
        promote_alpha: float | None = None,
    ) -> Decision:
        """``update`` from both slots' predicted log returns and the realised one."""
        return self.update(
            champion_value - outcome,
            shadow_value - outcome,
            hit(RETURN, champion_value, outcome) is True,
            hit(RETURN, shadow_value, outcome) is True,
            promote_alpha=promote_alpha,
        )

    def restarted(self) -> PairedLossTest:
        """A fresh test with the same config and cap (``deploy.trial_test``)."""
        return PairedLossTest(self._config, self._cap)

    def _log_e_values(self) -> tuple[float, float]:
        return float(log_mean_exp(self._log_better)), float(log_mean_exp(self._log_worse))

    @property
    def evidence(self) -> Evidence:
        """Hit counts and rates for dashboards; losses are mean truncated squared errors."""
        n = self._n
        return self._evidence(
            champion_loss=self._champion_loss_sum / n if n else None,
            shadow_loss=self._shadow_loss_sum / n if n else None,
            loss=KIND,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state; ``from_dict`` continues the trial exactly."""
        return {
            "version": STATE_VERSION,
            "kind": KIND,
            "config": asdict(self._config),
            "cap": self._cap,
            **{key: getattr(self, f"_{key}") for key in (*_COUNTS, *_SUMS)},
            "log_wealth_better": self._log_better.tolist(),
            "log_wealth_worse": self._log_worse.tolist(),
            "decision": self._decision.value,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PairedLossTest:
        """Rebuild a trial from ``to_dict`` output; ValueError naming the field if corrupt."""
        for key, want in (("version", STATE_VERSION), ("kind", KIND)):
            if d.get(key) != want:
                raise ValueError(f"loss test state {key} must be {want!r}, got {d.get(key)!r}")
        try:
            test = cls(PromotionTestConfig(**d["config"]), d["cap"])
            counts = {key: d[key] for key in _COUNTS}
            sums = {key: _numbers(key, [d[key]]) for key in _SUMS}
            logs = {key: _numbers(key, d[key]) for key in _LOG_WEALTH}
            decision = Decision(d["decision"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"loss test state is incomplete or malformed: {exc!r}") from exc
        for key, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"loss test state {key} must be an integer >= 0, got {value!r}")
        n, c, s = counts["n"], counts["champion_correct"], counts["shadow_correct"]
        c_only, s_only = counts["champion_only"], counts["shadow_only"]
        if not (
            n <= test.config.max_samples
            and c_only <= c <= n
            and s_only <= s <= n
            and c - c_only == s - s_only
        ):
            raise ValueError(f"loss test state counts are inconsistent: {counts}")
        # Each bar adds a loss in [0, cap^2] and a log wealth factor in [log 0.1, log 1.9].
        per_bar = {
            **dict.fromkeys(_SUMS, (0.0, test.cap**2)),
            **dict.fromkeys(_LOG_WEALTH, (math.log1p(-BET_GRID[-1]), math.log1p(BET_GRID[-1]))),
        }
        for key, got in {**sums, **logs}.items():
            lo, hi = per_bar[key]
            slack = 1e-9 * max(n, 1) * hi  # rounding in n additions
            if np.any(got < n * lo - slack) or np.any(got > n * hi + slack):
                raise ValueError(f"loss test state {key} is impossible after {n} bars: {got}")
        for key in _COUNTS:
            setattr(test, f"_{key}", counts[key])
        for key in _SUMS:
            setattr(test, f"_{key}", float(sums[key][0]))
        test._log_better, test._log_worse = logs["log_wealth_better"], logs["log_wealth_worse"]
        test._decision = decision
        return test


_COUNTS: Final = ("n", "champion_correct", "shadow_correct", "shadow_only", "champion_only")
_SUMS: Final = ("champion_loss_sum", "shadow_loss_sum")
_LOG_WEALTH: Final = ("log_wealth_better", "log_wealth_worse")


def _numbers(key: str, value: object) -> FloatArray:
    """A state field as finite floats: one per bet (a list) or one (a number, in a list)."""
    size = BET_GRID.size if key in _LOG_WEALTH else 1
    if not (
        isinstance(value, list)
        and len(value) == size
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) for v in value)
    ):
        shown = value[0] if size == 1 and isinstance(value, list) else value
        raise ValueError(f"loss test state {key} must be {size} finite number(s), got {shown!r}")
    return np.array(value, dtype=np.float64)
