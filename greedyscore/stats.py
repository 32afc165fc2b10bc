"""A reply's numbers from its tokens (stats, the near-tie rule), shared by `scoring` and `reply_json`
(which derives them again, so a document can never claim numbers its tokens do not have), and how
soon a sampler would part from it. Pure: no torch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .types import ReplyStats


def reply_stats(logprobs: Sequence[float]) -> ReplyStats:
    """Example: reply_stats([0.0, -math.log(2)]).perplexity -> sqrt(2)."""
    n = len(logprobs)
    if n == 0:
        return ReplyStats(0, 0.0, 1.0, 1.0)
    mean = sum(logprobs) / n
    return ReplyStats(n_tokens=n, mean_logprob=mean, perplexity=math.exp(-mean), min_prob=math.exp(min(logprobs)))


def is_near_tie(prob: float, rescored_prob: float, rescored_rank: int, tolerance: float) -> bool:
    """Rescoring ranks the token below 1, or moves its probability by more than `tolerance`."""
    return rescored_rank != 1 or abs(rescored_prob - prob) > tolerance


@dataclass(frozen=True)
class Divergence:
    """Over a greedy reply: how soon a sampled reply would part from it (each position given the
    greedy prefix before it)."""

    p_same: float  # probability that sampling reproduces the whole reply
    expected_agree: float  # expected number of leading tokens sampling reproduces before the first difference
    expected_differ: float  # expected number of positions where the sampled token differs from greedy's


def divergence(p_greedy: Sequence[float]) -> Divergence:
    """Example: divergence([1.0, 0.5]) -> Divergence(p_same=0.5, expected_agree=1.5, expected_differ=0.5)"""
    run, agree = 1.0, 0.0
    for p in p_greedy:
        run *= p
        agree += run
    return Divergence(run, agree, sum(1 - p for p in p_greedy))
