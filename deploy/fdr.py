"""Promotion across many symbols: which shadows stay convincing after counting the tries."""

from __future__ import annotations

from collections.abc import Mapping


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
    selects (that picks the best moment after the fact), or the per-symbol
    PROMOTE decisions, whose guarantee is per symbol (<= alpha each). The
    per-symbol guarantee is the primary one; e-BH is a stricter review gate.
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
