"""Many shadow trials at once: the promotion test vectorised over trials x bars.

For simulation (``bench/promotion_sim.py``) and offline replay: each row gets
the decision, at the same bar, that feeding it to
``deploy.sequential.PairedSequentialTest`` bar by bar would give.
"""

from __future__ import annotations

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
) -> BatchDecisions:
    """Replay rows of resolved bars (trials x bars) through the test, vectorised.

    Makes the same decision at the same bar as feeding each row to
    ``PairedSequentialTest.update`` (for simulation and offline replay).
    """
    champ = np.asarray(champion_correct, dtype=bool)
    shadow = np.asarray(shadow_correct, dtype=bool)
    if champ.ndim != 2 or champ.shape != shadow.shape:
        raise ValueError(
            "champion_correct and shadow_correct must be 2-D arrays of one shape, got "
            f"{champ.shape} and {shadow.shape}"
        )
    trials, bars = champ.shape
    last = min(bars, config.max_samples)
    first = config.min_samples
    promoted = np.zeros(trials, dtype=bool)
    rejected = np.zeros(trials, dtype=bool)
    decided_at = np.zeros(trials, dtype=np.int64)
    if last < first:
        return BatchDecisions(promoted, rejected, decided_at)
    threshold = log_threshold(config.alpha)
    n = np.arange(first, last + 1, dtype=np.int64)
    rows = max(1, chunk_cells // (max(1, last - first + 1) * BET_GRID.size))
    for lo in range(0, trials, rows):
        c, s = champ[lo : lo + rows, :last], shadow[lo : lo + rows, :last]
        s_only = np.cumsum(s & ~c, axis=1)[:, first - 1 :]
        c_only = np.cumsum(c & ~s, axis=1)[:, first - 1 :]
        better, worse = log_e_values(n, s_only, c_only, config.min_effect)
        worse_hit, better_hit = worse >= threshold, better >= threshold
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
