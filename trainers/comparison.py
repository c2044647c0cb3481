"""Statistical comparison of models on the same rows: pure functions, no I/O.

Two models scored on the same rows are paired: the row-to-row noise they share
cancels, so a paired test sees differences an unpaired one would miss.

- ``mcnemar``: which model is right more often (direction), from the rows where
  exactly one is right.
- ``diebold_mariano``: which model has the lower expected loss (per-row log loss
  of a direction model, or any loss of a return forecast), robust to the
  autocorrelation overlapping horizons put into loss differentials.
- ``friedman_nemenyi``: several models over several blocks (walk-forward folds):
  do their ranks differ, and which pairs (Demšar 2006, JMLR 7:1-30).

Every ``PairedTest`` reads the same way: ``statistic > 0`` favours ``a``, and
``p_value`` is two-sided.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from scipy.stats import binom, f, rankdata, studentized_range, t

from trainers.errors import InvalidInputError
from trainers.metrics import as_1d

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

EXACT_FRIEDMAN_WORK: Final = 200_000
"""Above this many (state x permutation) steps in all (~0.6 s) the Friedman p-value is
Iman-Davenport's; 4 models over 14 blocks take 168,000, 3 models over 10 blocks 1,158."""


@dataclass(frozen=True, slots=True)
class PairedTest:
    """A two-sided paired test of models ``a`` and ``b`` on the same ``rows``.

    ``a_wins`` / ``b_wins``: rows where only a (only b) is right (McNemar), or
    where a's loss is lower (higher) than b's (Diebold-Mariano). ``effect``: the
    accuracy difference a - b over ``rows`` (McNemar), or the mean loss
    difference b - a (Diebold-Mariano); positive favours a, like ``statistic``.
    """

    test: Literal["mcnemar", "diebold_mariano"]
    statistic: float
    p_value: float
    rows: int
    a_wins: int
    b_wins: int
    effect: float


@dataclass(frozen=True, slots=True)
class FriedmanResult:
    """Friedman's rank test over blocks, and the Nemenyi post-hoc at ``alpha``.

    ``mean_ranks``: 1 is best, ties share the mean rank. ``statistic``:
    Friedman's chi-square (no tie correction, as in Demšar 2006 and the Nemenyi
    test built on the same ranks). ``method``: ``exact`` (the permutation
    distribution, used while it is cheap: walk-forward has few folds, where
    both approximations fail) or ``iman_davenport`` (its F statistic in
    ``f_statistic``). ``differ``: pairs whose mean ranks are more than
    ``critical_difference`` apart, only when Friedman rejects at ``alpha``.
    """

    names: tuple[str, ...]
    blocks: int
    mean_ranks: tuple[float, ...]
    statistic: float
    f_statistic: float | None
    p_value: float
    method: Literal["exact", "iman_davenport"]
    alpha: float
    critical_difference: float
    differ: tuple[tuple[str, str], ...]

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha


def mcnemar(a_correct: BoolArray, b_correct: BoolArray) -> PairedTest:
    """McNemar's test on the discordant rows, two-sided mid-p binomial.

    Under the null each discordant row is a's with probability 1/2. The exact
    binomial p-value is conservative (its size falls well below alpha with few
    discordant rows); the mid-p halves the observed point's mass and holds
    size close to alpha at every n (Fagerland, Lydersen & Laake 2013, BMC Med
    Res Methodol 13:91), so it is used throughout, with no large-n switch.
    ``statistic``: (a_wins - b_wins) / sqrt(a_wins + b_wins), 0 without
    discordant rows. Raises InvalidInputError for unequal or non-1-D inputs.
    """
    a = as_1d("a_correct", a_correct, None).astype(bool)
    b = as_1d("b_correct", b_correct, len(a), against="a_correct").astype(bool)
    a_wins, b_wins = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    n = a_wins + b_wins
    if n == 0:
        return PairedTest("mcnemar", 0.0, 1.0, len(a), 0, 0, 0.0)
    k = min(a_wins, b_wins)
    p = 2.0 * (float(binom.cdf(k, n, 0.5)) - 0.5 * float(binom.pmf(k, n, 0.5)))
    effect = (a_wins - b_wins) / len(a)
    return PairedTest(
        "mcnemar", (a_wins - b_wins) / math.sqrt(n), min(1.0, p), len(a), a_wins, b_wins, effect
    )


def diebold_mariano(loss_a: FloatArray, loss_b: FloatArray, horizon: int = 1) -> PairedTest:
    """Diebold-Mariano test of equal expected loss, HLN-corrected, against t(n - 1).

    The differential d = loss_b - loss_a of h-step forecasts is MA(h - 1) under
    the null, so its long-run variance is estimated from its autocovariances up
    to lag ``horizon - 1`` with the truncated (uniform) kernel of Diebold &
    Mariano (1995): exactly the MA(h - 1) variance, where Newey-West's Bartlett
    weights would shrink the known lags and over-reject (about 10% at a
    nominal 5% for an equal-weight MA(4), h = 5). When that estimate is not positive (possible in
    small samples) the Bartlett weights are used, which always give a
    non-negative one. Harvey, Leybourne & Newbold (1997) scale the statistic by
    sqrt((n + 1 - 2h + h(h - 1)/n) / n) and read it from t(n - 1). Identical
    losses give statistic 0 and p-value 1. Raises InvalidInputError for unequal,
    empty or non-finite inputs or ``horizon`` < 1.
    """
    a = as_1d("loss_a", loss_a, None)
    b = as_1d("loss_b", loss_b, len(a), against="loss_a")
    if horizon < 1:
        raise InvalidInputError(f"horizon must be >= 1, got {horizon}")
    n = len(a)
    if n < 2:
        raise InvalidInputError(f"diebold_mariano needs at least 2 rows, got {n}")
    d = b - a
    a_wins, b_wins = int(np.sum(d > 0)), int(np.sum(d < 0))
    mean = float(d.mean())
    centred = d - mean
    lags = min(horizon - 1, n - 1)
    gamma = [float(centred[k:] @ centred[: n - k]) / n for k in range(lags + 1)]
    variance = gamma[0] + 2.0 * sum(gamma[1:])
    if variance <= 0.0:
        variance = gamma[0] + 2.0 * sum((1 - k / (lags + 1)) * g for k, g in enumerate(gamma) if k)
    if variance <= 0.0 or not math.isfinite(variance):
        return PairedTest("diebold_mariano", 0.0, 1.0, n, a_wins, b_wins, mean)
    h = horizon
    correction = math.sqrt(max(0.0, (n + 1 - 2 * h + h * (h - 1) / n) / n))
    statistic = mean / math.sqrt(variance / n) * correction
    p = 2.0 * float(t.sf(abs(statistic), n - 1))
    return PairedTest("diebold_mariano", statistic, min(1.0, p), n, a_wins, b_wins, mean)


def friedman_nemenyi(
    scores: FloatArray,
    names: Sequence[str],
    alpha: float = 0.05,
    *,
    method: Literal["auto", "iman_davenport"] = "auto",
) -> FriedmanResult:
    """Friedman's test of ``scores`` (blocks x models, higher is better), Nemenyi post-hoc.

    Nemenyi's critical difference is q_alpha * sqrt(k(k + 1) / (6N)) with
    q_alpha the studentized range quantile for k means and infinite degrees of
    freedom over sqrt(2) (Demšar 2006, section 3.2.2). ``method="auto"``: the
    exact p-value while it is cheap, else Iman-Davenport's F (Demšar's advice
    over the chi-square approximation, which is conservative). Raises InvalidInputError
    for fewer than 2 blocks or models, names that do not match the columns,
    non-finite scores or ``alpha`` outside (0, 1).
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise InvalidInputError(f"scores must be blocks x models, both >= 2, got {x.shape}")
    n_blocks, k = x.shape
    if len(names) != k:
        raise InvalidInputError(f"{len(names)} names for {k} models")
    if not np.isfinite(x).all():
        raise InvalidInputError("scores must be finite")
    if not 0.0 < alpha < 1.0:
        raise InvalidInputError(f"alpha must be in (0, 1), got {alpha!r}")
    ranks = rankdata(-x, axis=1)
    mean_ranks = ranks.mean(axis=0)
    chi2 = 12.0 * n_blocks / (k * (k + 1)) * (float(mean_ranks @ mean_ranks) - k * (k + 1) ** 2 / 4)
    chi2 = max(0.0, chi2)
    f_stat: float | None = None
    chosen: Literal["exact", "iman_davenport"] = "exact"
    exact = None if method != "auto" else _exact_friedman_p(ranks.sum(axis=0), n_blocks, k)
    if exact is not None:
        p = exact
    else:
        chosen = "iman_davenport"
        denominator = n_blocks * (k - 1) - chi2
        f_stat = math.inf if denominator <= 0 else (n_blocks - 1) * chi2 / denominator
        p = float(f.sf(f_stat, k - 1, (k - 1) * (n_blocks - 1)))
    cd = _nemenyi_q(alpha, k) * math.sqrt(k * (k + 1) / (6.0 * n_blocks))
    differ: list[tuple[str, str]] = []
    if p < alpha:
        for i, j in itertools.combinations(range(k), 2):
            if abs(mean_ranks[i] - mean_ranks[j]) > cd:
                differ.append((names[i], names[j]))
    return FriedmanResult(
        names=tuple(names),
        blocks=n_blocks,
        mean_ranks=tuple(float(r) for r in mean_ranks),
        statistic=chi2,
        f_statistic=f_stat,
        p_value=min(1.0, p),
        method=chosen,
        alpha=alpha,
        critical_difference=cd,
        differ=tuple(differ),
    )


@functools.lru_cache(maxsize=64)
def _nemenyi_q(alpha: float, k: int) -> float:
    """q_alpha of Nemenyi's test; cached, as scipy integrates numerically (~50 ms a call)."""
    return float(studentized_range.ppf(1.0 - alpha, k, np.inf)) / math.sqrt(2.0)


def _exact_friedman_p(rank_sums: FloatArray, n_blocks: int, k: int) -> float | None:
    """P(sum of squared rank sums >= observed) over all rankings, None when too costly.

    The statistic does not change when the models are relabelled, so the first
    block's ranking is fixed and the others are convolved in: the state is the
    vector of rank sums so far (sorted, by the same symmetry). Tied scores
    (mid-ranks) are judged against the no-ties distribution, slightly
    conservative.
    """
    perms = list(itertools.permutations(range(1, k + 1)))
    observed = float(rank_sums @ rank_sums) - 1e-9
    states: dict[tuple[int, ...], int] = {tuple(range(1, k + 1)): 1}
    work = 0
    for _ in range(n_blocks - 1):
        work += len(states) * len(perms)
        if work > EXACT_FRIEDMAN_WORK:
            return None
        nxt: dict[tuple[int, ...], int] = {}
        for state, count in states.items():
            for perm in perms:
                key = tuple(sorted(s + r for s, r in zip(state, perm, strict=True)))
                nxt[key] = nxt.get(key, 0) + count
        states = nxt
    total = sum(states.values())
    hits = sum(c for s, c in states.items() if sum(v * v for v in s) >= observed)
    return hits / total
