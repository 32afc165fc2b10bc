"""Scores from what a remote server reports: per step, the chosen token's logprob and a top-k list.

Pure maths on partial knowledge. With only the top-k, probability, logprob and margin are exact,
the rank is where the chosen token is listed, and the entropy is an interval: the residual mass
piled into as few tokens as the k-th probability allows, or spread over the rest of the vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .scoring import StepScores, empty_scores

NO_ID = -1  # padding of a short top list (a server that sent fewer than k alternatives)


@dataclass(frozen=True)
class ServerStep:
    """One position as a server reported it: `top` id -> logprob (the chosen token merged in), `rank`
    when the server states it, `full` when `top` is the whole vocabulary."""

    token_id: int
    logprob: float
    top: dict[int, float] = field(default_factory=dict)
    rank: int | None = None
    full: bool = False


def entropy_bounds(probs: Sequence[float], vocab_size: int, cap: float | None = None) -> tuple[float, float]:
    """[lower, upper] entropy (nats) of a distribution over `vocab_size` tokens of which `probs`
    are known and every other token is at most `cap` (default: the smallest known probability).
    Example: entropy_bounds([0.5, 0.5], 10) -> (ln 2, ln 2); entropy_bounds([0.5], 3) -> (ln 2, 1.5 ln 2)"""
    known = [p for p in probs if p > 0]
    h = -sum(p * math.log(p) for p in known)
    r = max(0.0, 1.0 - sum(known))
    m = vocab_size - len(known)  # tokens not in the list
    if r <= 1e-12 or m <= 0 or not known:
        return h, h
    cap = min(known) if cap is None or cap <= 0 else cap
    n = min(int(r // cap), m)  # as many tokens at the cap as the residual allows ...
    s = r - n * cap  # ... and the remainder in one more
    low = h + n * cap * math.log(1 / cap) + (s * math.log(1 / s) if s > 1e-12 else 0.0)
    high = h + r * math.log(m / r)
    return low, max(low, min(high, math.log(vocab_size)))


def step_scores(steps: Sequence[ServerStep], top_k: int, vocab_size: int) -> StepScores:
    """ServerSteps -> StepScores: entropy exact from a full list, else `entropy_bounds`; padded with NO_ID."""
    if not steps:
        return empty_scores(top_k)
    rows: list[tuple[float, int, float, float, float, list[int], list[float]]] = []
    for st in steps:
        top = dict(st.top)
        top.setdefault(st.token_id, st.logprob)
        ranked = sorted(top.items(), key=lambda kv: -kv[1])
        probs = [math.exp(lp) for _, lp in ranked]
        above = sum(1 for _, lp in ranked if lp > st.logprob)
        rank = st.rank if st.rank is not None else above + 1
        if st.full:
            low = high = -sum(p * math.log(p) for p in probs if p > 0)
        else:
            # unlisted tokens are at most the smallest listed one other than the chosen token
            # (which a server appends after its top list when it is not in it)
            others = [p for (i, _), p in zip(ranked, probs) if i != st.token_id and p > 0]
            low, high = entropy_bounds(probs, vocab_size, min(others) if others else None)
        margin = probs[0] - (probs[1] if len(probs) > 1 else 0.0)
        ids = [i for i, _ in ranked[:top_k]] + [NO_ID] * max(0, top_k - len(ranked))
        lps = [lp for _, lp in ranked[:top_k]] + [-math.inf] * max(0, top_k - len(ranked))
        rows.append((st.logprob, rank, low, margin, high, ids, lps))
    col = list(zip(*rows))
    return StepScores(
        logprob=torch.tensor(col[0], dtype=torch.float32),
        rank=torch.tensor(col[1], dtype=torch.int64),
        entropy=torch.tensor(col[2], dtype=torch.float32),
        margin=torch.tensor(col[3], dtype=torch.float32),
        top_ids=torch.tensor(col[5], dtype=torch.int64).view(len(rows), top_k),
        top_logprobs=torch.tensor(col[6], dtype=torch.float32).view(len(rows), top_k),
        entropy_max=torch.tensor(col[4], dtype=torch.float32),
    )
