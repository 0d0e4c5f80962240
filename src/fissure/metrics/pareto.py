"""The Pareto front of points scored on several objectives, and a weighted choice along it."""

from __future__ import annotations

import math
from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is at least as good as ``b`` on every objective and better on one (larger is better)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_front(points: Sequence[Sequence[float]], maximise: Sequence[bool] | None = None) -> list[int]:
    """Indices (in input order) of the points no other point dominates. ``maximise[k]`` says whether
    objective ``k`` is better larger (default: every one). A point with a NaN is never on the
    front and dominates nothing; equal points are all on the front or all off it."""
    if not points:
        return []
    signs = [1.0 if m else -1.0 for m in (maximise if maximise is not None else [True] * len(points[0]))]
    scored = [None if any(not math.isfinite(v) for v in p) else [s * v for s, v in zip(signs, p)] for p in points]
    return [i for i, p in enumerate(scored)
            if p is not None and not any(q is not None and dominates(q, p) for q in scored)]


def weighted_choice(points: Sequence[Sequence[float]], weights: Sequence[float], among: Sequence[int]) -> int:
    """The index in ``among`` with the largest weighted sum of objectives, each rescaled to [0, 1]
    over the ``among`` points (min-max: the weights then say how much of each objective's
    observed range one is worth). The first on a tie."""
    if not among:
        raise ValueError("nothing to choose from")
    k = len(weights)
    lo = [min(points[i][j] for i in among) for j in range(k)]
    hi = [max(points[i][j] for i in among) for j in range(k)]

    def score(i: int) -> float:
        return sum(w * ((points[i][j] - lo[j]) / (hi[j] - lo[j]) if hi[j] > lo[j] else 0.0)
                   for j, w in enumerate(weights))

    return max(among, key=score)
