"""Is the model as often right as it is sure? Top-1 calibration over teacher-forced text: positions
binned by top-1 probability (a reliability diagram), ECE (count-weighted |accuracy - confidence|)
and Brier (mean squared gap between the top-1 probability and being right).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from .types import Calibration, CalibrationBin, ScoredToken

N_BINS = 10
MIN_POSITIONS = 100  # fewer and most bins hold a handful of positions: the figure says so


def top1(t: ScoredToken) -> tuple[float, bool]:
    """(the model's top-1 probability at this position, whether the real token was it)."""
    best = max((a.prob for a in t.top), default=t.prob)
    return max(best, t.prob), t.rank == 1


def calibration(tokens: Sequence[ScoredToken], n_bins: int = N_BINS) -> Calibration:
    """Bins [i/n, (i+1)/n), the last closed; special tokens (a template's markers, not the text's) left out.
    Example: top-1 0.9 right, 0.6 wrong -> ece = (0.1 + 0.6) / 2, brier = (0.01 + 0.36) / 2."""
    pairs = [top1(t) for t in tokens if not t.special]
    edges = [i / n_bins for i in range(1, n_bins)]
    groups: list[list[tuple[float, bool]]] = [[] for _ in range(n_bins)]
    for p, right in pairs:
        groups[bisect.bisect_right(edges, p)].append((p, right))
    bins = []
    for i, g in enumerate(groups):
        conf = sum(p for p, _ in g) / len(g) if g else 0.0
        acc = sum(r for _, r in g) / len(g) if g else 0.0
        bins.append(CalibrationBin(i / n_bins, (i + 1) / n_bins, len(g), conf, acc))
    n = len(pairs)
    ece = sum(b.n / n * abs(b.accuracy - b.confidence) for b in bins) if n else 0.0
    brier = sum((p - r) ** 2 for p, r in pairs) / n if n else 0.0
    accuracy = sum(r for _, r in pairs) / n if n else 0.0
    return Calibration(tuple(bins), ece, brier, n, accuracy)
