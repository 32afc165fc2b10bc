"""What a reply's numbers follow from its tokens, in plain Python: the reply's stats and the
near-tie rule. `scoring` uses them on fresh scores; `reply_json` derives them again when a reply
comes back from a client or a store, so a document can never claim numbers its tokens do not have.
"""

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
    """Rescoring ranks the token below 1, or moves its probability by more than `tolerance`.

    Example: is_near_tie(0.51, 0.47, 2, 1e-3) -> True; is_near_tie(0.9, 0.9, 1, 1e-3) -> False
    """
    return rescored_rank != 1 or abs(rescored_prob - prob) > tolerance
