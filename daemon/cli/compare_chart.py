"""The critical-difference chart of ``ctd compare`` (Demšar 2006, JMLR 7, fig. 1 and 2).

Each candidate sits at its mean rank across the walk-forward test blocks (1 is
best, on the left); a bar above the axis is Nemenyi's critical difference; a
thick line under the axis joins candidates no pair of which differs
significantly. Drawn onto an axes handed in, so matplotlib is imported only by
the caller that renders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from trainers.metadata import ComparisonRecord, FriedmanRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def draw_critical_difference(
    ax: Axes,
    version: str,
    comparison: ComparisonRecord | None,
    colors: Mapping[str, str] | None = None,
) -> None:
    """The chart for ``version``'s Friedman record, or a line saying why there is none.

    ``colors``: by trainer name, to match the chart's other panels (default: C0, C1...).
    """
    friedman = None if comparison is None else comparison.friedman
    if friedman is None:
        why = (
            "its metadata predates candidate comparisons"
            if comparison is None
            else comparison.friedman_skipped or "no Friedman test"
        )
        ax.set_axis_off()
        ax.text(
            0.5, 0.5, f"{version}: no critical-difference chart:\n{why}",
            ha="center", va="center", fontsize=9, transform=ax.transAxes,
        )  # fmt: skip
        return
    k = len(friedman.candidates)
    order = sorted(range(k), key=lambda i: friedman.mean_ranks[i])
    ax.hlines(0.0, 1, k, colors="black")
    for tick in range(1, k + 1):
        ax.vlines(tick, 0.0, 0.06, colors="black")
        ax.text(tick, 0.1, str(tick), ha="center", fontsize=8)
    cd = friedman.critical_difference
    ax.hlines(0.45, 1, 1 + cd, colors="black", linewidth=2)
    ax.text(1 + cd / 2, 0.52, f"CD {cd:.2f}", ha="center", fontsize=8)
    for row, i in enumerate(order):
        rank, y = friedman.mean_ranks[i], -0.35 - 0.22 * row
        color = (colors or {}).get(friedman.candidates[i], f"C{i % 10}")
        ax.plot([rank, rank], [0.0, y], color=color, linewidth=1)
        ax.plot([rank], [0.0], "o", color=color)
        ax.text(rank, y - 0.04, f" {friedman.candidates[i]} ({rank:.2f})", fontsize=8, va="top")
    for level, (lo, hi) in enumerate(_groups(friedman, order)):
        y = -0.12 - 0.06 * level
        ax.hlines(y, lo - 0.03, hi + 0.03, colors="black", linewidth=4)
    ax.set_xlim(0.5, k + 1.5)
    ax.set_ylim(-0.5 - 0.22 * k, 0.7)
    ax.set_axis_off()
    pairs = ", ".join(f"{a} / {b}" for a, b in friedman.differ)
    ax.set_title(
        f"{version}: mean rank over {len(friedman.block_starts)} walk-forward test blocks "
        "(1 = best; a bar joins those not significantly apart)\n"
        f"Friedman ({friedman.method}) p {friedman.p_value:.3f}, Nemenyi at alpha "
        f"{friedman.alpha:g}: " + (f"differ: {pairs}" if pairs else "no pair differs"),
        fontsize=9,
        wrap=True,
    )


def _groups(friedman: FriedmanRecord, order: Sequence[int]) -> list[tuple[float, float]]:
    """Rank spans of the maximal runs (in rank order) of candidates no pair of which differs."""
    differ = {frozenset(p) for p in friedman.differ}
    names = [friedman.candidates[i] for i in order]
    ranks = [friedman.mean_ranks[i] for i in order]
    spans: list[tuple[float, float]] = []
    for start in range(len(names)):
        stop = start
        while stop + 1 < len(names) and all(
            frozenset((names[j], names[stop + 1])) not in differ for j in range(start, stop + 1)
        ):
            stop += 1
        span = (ranks[start], ranks[stop])
        if stop > start and not any(lo <= span[0] and span[1] <= hi for lo, hi in spans):
            spans.append(span)
    return spans
