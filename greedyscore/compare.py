"""Two roads through a reply, compared: what each costs, where they part and where they meet again.

Pure functions on ScoredReplies (no model): the UI, the CLI and the export use the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from difflib import SequenceMatcher

from .types import Alternative, ScoredReply

REJOIN_MIN_TOKENS = 3  # tokens that must match again, in order, for two texts to have rejoined


@dataclass(frozen=True)
class PathCost:
    """A whole path from the reply's first token: sum of logprobs and perplexity."""

    n_tokens: int
    total_logprob: float
    perplexity: float


@dataclass(frozen=True)
class ForkComparison:
    forked_at: int  # the first index where the two paths differ
    original: PathCost
    fork: PathCost
    rejoin: tuple[int, int] | None  # (index in the fork, index in the original) where they meet again


@dataclass(frozen=True)
class ForkPoint:
    """A place where the other road was close: the chosen token and its runner-up."""

    at: int
    chosen: str
    prob: float
    runner_up: Alternative
    margin: float


def path_cost(reply: ScoredReply) -> PathCost:
    """Example: path_cost(reply).total_logprob == sum(t.logprob for t in reply.tokens)"""
    lps = [t.logprob for t in reply.tokens]
    total = sum(lps)
    return PathCost(len(lps), total, math.exp(-total / len(lps)) if lps else 1.0)


def rejoin_point(original: list[int], fork: list[int], start: int, min_tokens: int = REJOIN_MIN_TOKENS
                 ) -> tuple[int, int] | None:
    """Where two token sequences that part at `start` meet again: the first run of at least
    `min_tokens` equal tokens after the divergence, or a run of 2+ that ends both sequences
    (a lone shared end-of-turn is not a rejoin).

    Example: rejoin_point([1, 2, 3, 4, 5], [1, 9, 3, 4, 5], 1) -> (2, 2)
    """
    a, b = original[start + 1 :], fork[start + 1 :]
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    for block in matcher.get_matching_blocks():
        if block.size == 0:
            continue
        ends_both = block.a + block.size == len(a) and block.b + block.size == len(b)
        if block.size >= min_tokens or (ends_both and block.size >= 2):
            return start + 1 + block.b, start + 1 + block.a
    return None


def compare_fork(original: ScoredReply, fork: ScoredReply) -> ForkComparison:
    """The fork against the reply it was forked from (fork.forked_at set)."""
    if fork.forked_at is None:
        raise ValueError("not a fork: forked_at is None")
    ids_o, ids_f = [t.id for t in original.tokens], [t.id for t in fork.tokens]
    return ForkComparison(fork.forked_at, path_cost(original), path_cost(fork),
                          rejoin_point(ids_o, ids_f, fork.forked_at))


def forks_that_matter(reply: ScoredReply, k: int = 3) -> list[ForkPoint]:
    """The k positions where the runner-up came closest (smallest margin p1 - p2), in reply order.

    Example: forks_that_matter(reply, 1)[0].runner_up.text -> " Lyon"
    """
    points = []
    for i, t in enumerate(reply.tokens):
        others = [a for a in t.top if a.id != t.id]
        if t.special or not others:
            continue
        points.append(ForkPoint(i, t.text, t.prob, others[0], t.margin))
    closest = sorted(points, key=lambda p: p.margin)[:k]
    return sorted(closest, key=lambda p: p.at)
