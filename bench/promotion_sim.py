"""Monte-Carlo check of the shadow promotion test under continuous monitoring.

    python -m bench.promotion_sim [--trials N] [--seed S] [--check M]

Correlation model. Champion and shadow predict the direction of the same bars,
so a bar is *discordant* (exactly one model right) exactly when their
predictions differ. Successive retrains of one trainer family on overlapping
rolling windows with the same features disagree on roughly 20-35% of bars; the
headline case is a discordance of 30% (champion 0.50, shadow 0.55 gives a
correlation of ~0.40 between the two correctness indicators). Discordance 0.5
is two independent models, the least favourable case for a paired test, since
power grows with accuracy gap**2 / discordance. Bars are i.i.d. given these
four cell probabilities: P(shadow only) = (D + gap)/2, P(champion only) =
(D - gap)/2, P(both) = champion accuracy - P(champion only), P(neither) = rest.

Decisions come from ``deploy.sequential_batch.batch_decisions``, the vectorised twin
of ``PairedSequentialTest`` (tests/test_sequential.py pins that they agree);
this script also replays the first ``--check`` trials of two scenarios through
the class itself and fails loudly if any decision or decision bar differs.

Section (d) runs the daemon's fleet-wide policy, e-LOND (``deploy.fdr``), with
the functions the daemon uses: ``e_lond_alpha`` for each trial's promote level
and ``deploy.sequential_batch.lockstep_decisions`` for trials that run side by
side, the level of each following the promotions made so far. Each batch is a
fresh fleet of 50 symbols whose trials start together, in a random index order; the
same fleet then runs nine more such batches, one after the other (test indices 51-500,
the discoveries carried over), as a daemon running 24/7 starts about one a day.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import stats

from deploy.fdr import DEFAULT_HORIZON, RHO, e_lond_alpha, ebh
from deploy.sequential import (
    Decision,
    PairedSequentialTest,
    PromotionTestConfig,
    log_e_values,
)
from deploy.sequential_batch import BatchDecisions, batch_decisions, lockstep_decisions

Z_ONE_SIDED_05 = float(stats.norm.ppf(0.95))
PER_SYMBOL, E_LOND = "per-symbol PROMOTE", "e-LOND, the daemon's policy"
E_LOND_NEXT = "e-LOND, the next 50 trials"
E_LOND_LONG = "e-LOND, the next 450 trials"
FLEET_BATCHES = 10
"""Batches of one fleet in section (d): the first, then the later ones (indices 51-500)."""

Bools = npt.NDArray[np.bool_]
Floats = npt.NDArray[np.float64]


def simulate(
    rng: np.random.Generator,
    trials: int,
    bars: int,
    *,
    champion_acc: float,
    shadow_acc: float,
    discordance: float,
) -> tuple[Bools, Bools]:
    """Return (champion_correct, shadow_correct) boolean arrays of shape (trials, bars)."""
    gap = shadow_acc - champion_acc
    p_shadow_only = (discordance + gap) / 2
    p_champion_only = (discordance - gap) / 2
    p_both = champion_acc - p_champion_only
    if min(p_shadow_only, p_champion_only, p_both, 1 - discordance - p_both) < 0:
        raise ValueError(f"impossible cell probabilities for discordance {discordance}")
    u = rng.random((trials, bars))
    shadow_only = u < p_shadow_only
    champion_only = (u >= p_shadow_only) & (u < discordance)
    both = (u >= discordance) & (u < discordance + p_both)
    return champion_only | both, shadow_only | both


def correctness_correlation(champion_acc: float, shadow_acc: float, discordance: float) -> float:
    p_both = champion_acc - (discordance - (shadow_acc - champion_acc)) / 2
    cov = p_both - champion_acc * shadow_acc
    return cov / math.sqrt(champion_acc * (1 - champion_acc) * shadow_acc * (1 - shadow_acc))


def naive_promotions(
    champ: Bools, shadow: Bools, config: PromotionTestConfig
) -> tuple[Bools, Bools]:
    """One-sided McNemar z-test at 0.05, re-checked after every bar: (ever, at last bar only)."""
    s = np.cumsum(shadow & ~champ, axis=1)[:, config.min_samples - 1 : config.max_samples]
    f = np.cumsum(champ & ~shadow, axis=1)[:, config.min_samples - 1 : config.max_samples]
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (s - f) / np.sqrt(s + f)
    significant = np.asarray(np.nan_to_num(z, nan=0.0) > Z_ONE_SIDED_05, dtype=np.bool_)
    ever: Bools = np.asarray(significant.any(axis=1), dtype=np.bool_)
    last: Bools = significant[:, -1]
    return ever, last


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    lo = stats.beta.ppf((1 - level) / 2, k, n - k + 1) if k > 0 else 0.0
    hi = stats.beta.ppf(1 - (1 - level) / 2, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


def rate(flags: Bools) -> str:
    k, n = int(np.sum(flags)), len(flags)
    lo, hi = clopper_pearson(k, n)
    return f"{k / n:6.3f} [{lo:.3f}, {hi:.3f}]"


def check_class(
    champ: Bools, shadow: Bools, config: PromotionTestConfig, outcome: BatchDecisions, rows: int
) -> int:
    """Replay ``rows`` trials through PairedSequentialTest; raise if the twin disagrees."""
    for i in range(rows):
        test = PairedSequentialTest(config)
        for c, s in zip(champ[i], shadow[i], strict=True):
            if test.update(bool(c), bool(s)) is not Decision.CONTINUE:
                break
        if test.decision is not outcome.decision(i) or (
            test.decision is not Decision.CONTINUE and test.evidence.n != outcome.decided_at[i]
        ):
            raise SystemExit(f"class and vectorised twin disagree on trial {i}")
    return rows


def fleet_batches(
    rng: np.random.Generator,
    order_rng: np.random.Generator,
    config: PromotionTestConfig,
    *,
    batches: int,
    symbols: int,
    better_share: float,
    discordance: float,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Mean FDP and power of four promotion policies over batches of symbols, and of e-LOND
    on the same fleet's later batches, one after the other (test indices 51-500, past the
    horizon, each with the discoveries of all before it): the second alone, and the nine
    pooled (FDP and power of the fleet's promotions in them). ``order_rng`` draws e-LOND's
    index orders and the later batches (apart, so the other rows see the data they always
    saw)."""
    n_better = round(symbols * better_share)
    is_better = np.arange(symbols) < n_better
    fdp: dict[str, list[float]] = {
        PER_SYMBOL: [],
        "e-BH, e frozen at decision": [],
        "e-BH at review bar": [],
        E_LOND: [],
        E_LOND_NEXT: [],
        E_LOND_LONG: [],
    }
    power: dict[str, list[float]] = {key: [] for key in fdp}
    for _ in range(batches):
        champ, shadow = _fleet(rng, config, symbols, n_better, discordance)
        outcome = batch_decisions(champ, shadow, config)
        s_only = np.cumsum(shadow & ~champ, axis=1)
        c_only = np.cumsum(champ & ~shadow, axis=1)
        rows = np.arange(symbols)
        at = outcome.decided_at - 1
        frozen, _ = log_e_values(at + 1, s_only[rows, at], c_only[rows, at], config.min_effect)
        review, _ = log_e_values(
            config.max_samples, s_only[:, -1], c_only[:, -1], config.min_effect
        )
        e_lond = _e_lond(order_rng, champ, shadow, config, first_index=1, discoveries=0)
        found = int(e_lond.promoted.sum())
        later: list[Bools] = []  # each later batch's promotions, rows as in _fleet
        for b in range(1, FLEET_BATCHES):
            champ_b, shadow_b = _fleet(order_rng, config, symbols, n_better, discordance)
            promoted = _e_lond(
                order_rng, champ_b, shadow_b, config, first_index=b * symbols + 1, discoveries=found
            ).promoted
            found += int(promoted.sum())
            later.append(promoted)
        pooled = np.concatenate(later)
        right = int((pooled & np.tile(is_better, len(later))).sum())
        fdp[E_LOND_LONG].append((int(pooled.sum()) - right) / max(1, int(pooled.sum())))
        power[E_LOND_LONG].append(right / max(1, n_better * len(later)))
        selections = {
            PER_SYMBOL: set(np.flatnonzero(outcome.promoted).tolist()),
            "e-BH, e frozen at decision": _ebh_indices(frozen, config.alpha),
            "e-BH at review bar": _ebh_indices(review, config.alpha),
            E_LOND: set(np.flatnonzero(e_lond.promoted).tolist()),
            E_LOND_NEXT: set(np.flatnonzero(later[0]).tolist()),
        }
        for key, chosen in selections.items():
            wrong = sum(not is_better[i] for i in chosen)
            fdp[key].append(wrong / max(1, len(chosen)))
            power[key].append(sum(is_better[i] for i in chosen) / max(1, n_better))
    return fdp, power


def _fleet(
    rng: np.random.Generator,
    config: PromotionTestConfig,
    symbols: int,
    n_better: int,
    discordance: float,
) -> tuple[Bools, Bools]:
    """One batch: ``n_better`` shadows 5 points better, then the rest equal to champion."""
    champ_b, shadow_b = simulate(
        rng,
        n_better,
        config.max_samples,
        champion_acc=0.50,
        shadow_acc=0.55,
        discordance=discordance,
    )
    champ_n, shadow_n = simulate(
        rng,
        symbols - n_better,
        config.max_samples,
        champion_acc=0.50,
        shadow_acc=0.50,
        discordance=discordance,
    )
    return np.vstack([champ_b, champ_n]), np.vstack([shadow_b, shadow_n])


def _e_lond(
    rng: np.random.Generator,
    champ: Bools,
    shadow: Bools,
    config: PromotionTestConfig,
    *,
    first_index: int,
    discoveries: int,
) -> BatchDecisions:
    """The batch's trials side by side at the daemon's e-LOND levels, test indices
    ``first_index`` on in a random order, after ``discoveries`` earlier promotions."""
    index = rng.permutation(len(champ)) + first_index

    def levels(made: int) -> Floats:
        return e_lond_alpha(config.alpha, index, discoveries + made, DEFAULT_HORIZON)

    return lockstep_decisions(champ, shadow, config, levels)


def _ebh_indices(log_e: Floats, alpha: float) -> set[int]:
    chosen = ebh({str(i): math.exp(min(v, 700.0)) for i, v in enumerate(log_e)}, alpha)
    return {int(i) for i in chosen}


def mean_ci(values: Sequence[float]) -> str:
    arr = np.asarray(values, dtype=float)
    half = 1.96 * arr.std(ddof=1) / math.sqrt(len(arr)) if len(arr) > 1 else 0.0
    return f"{arr.mean():6.3f} +- {half:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000, help="trials per scenario")
    parser.add_argument("--seed", type=int, default=20250101)
    parser.add_argument("--check", type=int, default=100, help="trials replayed via the class")
    args = parser.parse_args()
    if args.trials < 1:
        parser.error(f"--trials must be >= 1, got {args.trials}")
    config = PromotionTestConfig()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    print(
        f"PromotionTestConfig: alpha={config.alpha} min_samples={config.min_samples} "
        f"max_samples={config.max_samples} min_effect={config.min_effect}; "
        f"{args.trials} trials per scenario, seed {args.seed}"
    )
    print("Naive = one-sided McNemar z-test at 0.05 re-checked after every bar (same data).")
    print(
        "Rates with 95% Clopper-Pearson intervals. med. bars = median bars to PROMOTE among "
        "promoted trials; to decide = median bars to any decision.\n"
    )

    header = (
        f"{'scenario':<30} {'corr':>5} {'sequential promoted':>22} {'med. bars':>9} "
        f"{'to decide':>9} {'early REJECT':>12} {'naive re-checked':>22} {'naive 1 look':>12}"
    )
    print(header)
    print("-" * len(header))
    checked = 0
    scenarios = [(0.50, 0.50, 0.3), (0.50, 0.50, 0.5)] + [
        (0.50, 0.55, d) for d in (0.2, 0.3, 0.4, 0.5)
    ]
    null_ok = True
    for champion_acc, shadow_acc, discordance in scenarios:
        champ, shadow = simulate(
            rng,
            args.trials,
            config.max_samples,
            champion_acc=champion_acc,
            shadow_acc=shadow_acc,
            discordance=discordance,
        )
        outcome = batch_decisions(champ, shadow, config)
        early_reject = outcome.rejected & (outcome.decided_at < config.max_samples)
        naive_any, naive_last = naive_promotions(champ, shadow, config)
        promoted_at = outcome.decided_at[outcome.promoted]
        median = f"{np.median(promoted_at):.0f}" if promoted_at.size else "-"
        kind = "H0 no signal" if champion_acc == shadow_acc else "H1 +5 points"
        name = f"{kind} {champion_acc:.2f}/{shadow_acc:.2f} D={discordance}"
        corr = correctness_correlation(champion_acc, shadow_acc, discordance)
        to_decide = f"{np.median(outcome.decided_at):.0f}"
        print(
            f"{name:<30} {corr:5.2f} {rate(outcome.promoted):>22} {median:>9} {to_decide:>9} "
            f"{np.mean(early_reject):12.3f} {rate(naive_any):>22} {np.mean(naive_last):12.3f}"
        )
        if champion_acc == shadow_acc:
            null_ok &= bool(np.mean(outcome.promoted) <= config.alpha)
        if discordance == 0.3:
            checked += check_class(champ, shadow, config, outcome, min(args.check, args.trials))

    print(
        f"\nPairedSequentialTest replayed on {checked} trials: same decision at the same bar "
        "as the vectorised twin."
    )
    print(
        f"False promotion rate <= alpha={config.alpha} in every H0 scenario: "
        + ("yes" if null_ok else "NO")
    )

    batches, symbols = max(20, args.trials // 10), 50
    order_rng = np.random.default_rng([args.seed, 1])
    fdp, power = fleet_batches(
        rng,
        order_rng,
        config,
        batches=batches,
        symbols=symbols,
        better_share=0.2,
        discordance=0.3,
    )
    print(
        f"\n(d) {batches} batches of {symbols} symbols, 20% with a shadow 5 points better "
        f"(D=0.3); FDR = mean share of wrong promotions (mean +- 95% normal CI), target <= "
        f"{config.alpha}"
    )
    header = f"{'policy':<30} {'FDR':>16} {'power':>16}"
    print(header)
    print("-" * len(header))
    for key in fdp:
        print(f"{key:<30} {mean_ci(fdp[key]):>16} {mean_ci(power[key]):>16}")
    print(
        "e-BH guarantee holds for e-values at stopping times (both e-BH rows); the per-symbol "
        "row controls each symbol's error, not the share; e-LOND (horizon "
        f"{DEFAULT_HORIZON}, levels from the promotions so far) controls the share for "
        "decisions made bar by bar, as the daemon makes them."
    )
    ratio = np.mean(power[E_LOND]) / np.mean(power[PER_SYMBOL])
    print(
        f"e-LOND power / per-symbol power = {ratio:.2f} (goal >= 0.80: "
        + ("met" if ratio >= 0.8 else "NOT met")
        + ")"
    )
    nxt, long = (np.mean(power[k]) / np.mean(power[PER_SYMBOL]) for k in (E_LOND_NEXT, E_LOND_LONG))
    print(
        f"Later batches of the same fleet, past the horizon, each with the discoveries of all "
        f"before it: trials {symbols + 1}-{2 * symbols} power ratio {nxt:.2f}, trials "
        f"{symbols + 1}-{FLEET_BATCHES * symbols} (pooled) {long:.2f}. gamma_t = (1 - rho)/H "
        f"up to H, then rho ln(H+1)^2 (1/ln(t)^2 - 1/ln(t+1)^2), rho = {RHO}: a tail like "
        "1/(t ln(t)^3), so the level falls slowly as the fleet's trials add up."
    )
    print(f"\nwall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
