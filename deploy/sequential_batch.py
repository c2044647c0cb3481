"""Many shadow trials at once: the promotion test vectorised over trials x bars.

For simulation (``bench/promotion_sim.py``) and offline replay: each row gets
the decision, at the same bar, that feeding it to
``deploy.sequential.PairedSequentialTest`` bar by bar would give.
``batch_decisions`` gives each trial a fixed promote level; ``lockstep_decisions``
runs trials side by side, bar for bar, with a promote level that follows the
promotions made so far (a fleet-wide procedure such as e-LOND, ``deploy.fdr``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from deploy.sequential import (
    BET_GRID,
    Decision,
    PromotionTestConfig,
    log_e_values,
    log_threshold,
)

PromoteLevels = Callable[[int], npt.ArrayLike]
"""Promotions made so far -> each trial's promote level (shape (trials,) or a scalar)."""


@dataclass(frozen=True, slots=True)
class BatchDecisions:
    """Outcome of many independent trials; ``decided_at`` is 0 while undecided."""

    promoted: npt.NDArray[np.bool_]
    rejected: npt.NDArray[np.bool_]
    decided_at: npt.NDArray[np.int64]

    def decision(self, trial: int) -> Decision:
        if self.promoted[trial]:
            return Decision.PROMOTE
        return Decision.REJECT if self.rejected[trial] else Decision.CONTINUE


def batch_decisions(
    champion_correct: npt.ArrayLike,
    shadow_correct: npt.ArrayLike,
    config: PromotionTestConfig,
    chunk_cells: int = 4_000_000,
    *,
    promote_alpha: npt.ArrayLike | None = None,
) -> BatchDecisions:
    """Replay rows of resolved bars (trials x bars) through the test, vectorised.

    Makes the same decision at the same bar as feeding each row to
    ``PairedSequentialTest.update`` (for simulation and offline replay), with
    ``promote_alpha`` (a scalar or one level per row) passed on every bar.
    """
    champ, shadow, n, out = _begin(champion_correct, shadow_correct, config)
    if not len(n):
        return out
    promoted, rejected, decided_at = out.promoted, out.rejected, out.decided_at
    trials, first, last = len(champ), config.min_samples, int(n[-1])
    threshold = log_threshold(config.alpha)
    promote_at = _promote_thresholds(config, promote_alpha, trials)
    rows = max(1, chunk_cells // (max(1, last - first + 1) * BET_GRID.size))
    for lo in range(0, trials, rows):
        c, s = champ[lo : lo + rows, :last], shadow[lo : lo + rows, :last]
        s_only = np.cumsum(s & ~c, axis=1)[:, first - 1 :]
        c_only = np.cumsum(c & ~s, axis=1)[:, first - 1 :]
        better, worse = log_e_values(n, s_only, c_only, config.min_effect)
        worse_hit = worse >= threshold
        better_hit = better >= promote_at[lo : lo + rows, None]
        hit = worse_hit | better_hit
        any_hit = hit.any(axis=1)
        at = hit.argmax(axis=1)
        idx = np.arange(len(at))
        block = slice(lo, lo + len(at))
        promoted[block] = any_hit & ~worse_hit[idx, at] & better_hit[idx, at]
        rejected[block] = any_hit & worse_hit[idx, at]
        decided_at[block] = np.where(any_hit, n[at], 0)
        if last == config.max_samples:  # the budget ends every trial
            out_of_budget = ~any_hit
            rejected[block] |= out_of_budget
            decided_at[block] = np.where(out_of_budget, last, decided_at[block])
    return BatchDecisions(promoted, rejected, decided_at)


def lockstep_decisions(
    champion_correct: npt.ArrayLike,
    shadow_correct: npt.ArrayLike,
    config: PromotionTestConfig,
    promote_alpha: PromoteLevels,
) -> BatchDecisions:
    """Trials that start together and see their bars at the same times, the promote level of
    every trial set by ``promote_alpha(promotions so far)``.

    The same decisions, at the same bars, as feeding all rows' bar k to their
    ``PairedSequentialTest`` before any row's bar k + 1, each update with the level
    given the PROMOTEs of bars before k (those of bar k count from bar k + 1 on, as
    the daemon counts a promotion once it is applied). Event-driven: the level is
    re-read only when a promotion changes the count.
    """
    champ, shadow, n, out = _begin(champion_correct, shadow_correct, config)
    if not len(n):
        return out
    promoted, rejected, decided_at = out.promoted, out.rejected, out.decided_at
    trials, first, last = len(champ), config.min_samples, int(n[-1])
    s_only = np.cumsum(shadow[:, :last] & ~champ[:, :last], axis=1)[:, first - 1 :]
    c_only = np.cumsum(champ[:, :last] & ~shadow[:, :last], axis=1)[:, first - 1 :]
    better, worse = log_e_values(n, s_only, c_only, config.min_effect)
    worse_hit = worse >= log_threshold(config.alpha)
    step, count = 0, 0
    while step < len(n):
        running = ~(promoted | rejected)
        promote_at = _promote_thresholds(config, promote_alpha(count), trials)
        better_hit = better[:, step:] >= promote_at[:, None]
        hit = (worse_hit[:, step:] | better_hit) & running[:, None]
        any_hit = hit.any(axis=1)
        if not any_hit.any():
            break
        at = int(hit.argmax(axis=1)[any_hit].min())  # the next bar where any trial decides
        now = hit[:, at]
        rejected |= now & worse_hit[:, step + at]
        newly = now & ~worse_hit[:, step + at]
        promoted |= newly
        decided_at[now] = n[step + at]
        count += int(newly.sum())
        step += at + 1
    if last == config.max_samples:  # the budget ends every trial
        out_of_budget = ~(promoted | rejected)
        rejected |= out_of_budget
        decided_at[out_of_budget] = last
    return BatchDecisions(promoted, rejected, decided_at)


def _begin(
    champion_correct: npt.ArrayLike, shadow_correct: npt.ArrayLike, config: PromotionTestConfig
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.int64], BatchDecisions]:
    """The pair as arrays, the sample counts a decision may fall on (none when the rows are
    shorter than ``min_samples``) and all-undecided decisions to fill in."""
    champ, shadow = _pair(champion_correct, shadow_correct)
    trials, bars = champ.shape
    n = np.arange(config.min_samples, min(bars, config.max_samples) + 1, dtype=np.int64)
    undecided = BatchDecisions(
        np.zeros(trials, dtype=bool), np.zeros(trials, dtype=bool), np.zeros(trials, dtype=np.int64)
    )
    return champ, shadow, n, undecided


def _pair(
    champion_correct: npt.ArrayLike, shadow_correct: npt.ArrayLike
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    champ = np.asarray(champion_correct, dtype=bool)
    shadow = np.asarray(shadow_correct, dtype=bool)
    if champ.ndim != 2 or champ.shape != shadow.shape:
        raise ValueError(
            "champion_correct and shadow_correct must be 2-D arrays of one shape, got "
            f"{champ.shape} and {shadow.shape}"
        )
    return champ, shadow


def _promote_thresholds(
    config: PromotionTestConfig, promote_alpha: npt.ArrayLike | None, trials: int
) -> npt.NDArray[np.float64]:
    """Natural-log e-value each trial PROMOTEs at, shape (trials,)."""
    level = np.broadcast_to(
        np.asarray(config.alpha if promote_alpha is None else promote_alpha, dtype=np.float64),
        (trials,),
    )
    if np.any((level <= 0.0) | (level >= 1.0)):
        raise ValueError(f"promote_alpha must be in (0, 1), got {promote_alpha!r}")
    # The scalar function, so that the twin compares with the class's very numbers.
    return np.fromiter((log_threshold(float(a)) for a in level), np.float64, trials)
