"""Paired comparison of two models on the same questions: an exact McNemar test and a 95%
interval on the difference in accuracy."""

from __future__ import annotations

import math
from collections.abc import Mapping


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: under "no difference" each of the ``b + c`` discordant
    questions (right for one model only) is a fair coin, so this is a binomial test of
    ``min(b, c)`` out of ``b + c`` at 1/2."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_interval(b: int, c: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval on the difference of two paired proportions, (b - c) / n, by Bonett &
    Price's adjusted Wald method (2012): one pseudo-observation added to each discordant cell,
    which keeps close to nominal coverage at small counts where the plain Wald interval does
    not."""
    if n == 0:
        return (0.0, 0.0)
    p12, p21 = (b + 1) / (n + 2), (c + 1) / (n + 2)
    diff = p12 - p21
    half = z * math.sqrt(max(0.0, p12 + p21 - diff * diff) / (n + 2))
    return (max(-1.0, diff - half), min(1.0, diff + half))


def compare(a: Mapping[str, bool], b: Mapping[str, bool]) -> dict:
    """Model A against model B on the questions both answered (``a`` and ``b`` map a question
    id to whether the model got it right): A's accuracy minus B's, its 95% interval, the
    exact McNemar p-value, and the discordant counts (``a_only``: A right and B wrong)."""
    common = [q for q in a if q in b]
    a_only = sum(bool(a[q]) and not b[q] for q in common)
    b_only = sum(bool(b[q]) and not a[q] for q in common)
    n = len(common)
    lo, hi = paired_interval(a_only, b_only, n)
    return {
        "n": n,
        "a": round(sum(bool(a[q]) for q in common) / max(1, n), 4),
        "b": round(sum(bool(b[q]) for q in common) / max(1, n), 4),
        "diff": round((a_only - b_only) / max(1, n), 4),
        "ci95": [round(lo, 4), round(hi, 4)],
        "p_value": float(f"{mcnemar_exact(a_only, b_only):.4g}"),
        "a_only": a_only,
        "b_only": b_only,
    }


def describe(c: dict) -> str:
    """One line: ``+4.2 [+1.0, +7.4] p=0.011 (n=500)``, in points."""
    lo, hi = c["ci95"]
    return (
        f"{100 * c['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] "
        f"p={c['p_value']:.3g} (n={c['n']})"
    )
