"""A reply's numbers from its tokens (stats, the near-tie rule), shared by `scoring` and `reply_json`
(which derives them again, so a document can never claim numbers its tokens do not have)."""

from __future__ import annotations

import math
from collections.abc import Sequence

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
