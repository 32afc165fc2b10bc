"""What sampling would have done: a sampler's distribution, stage by stage, next to greedy's.

A lens, not a generator: greedy stays what the demo decodes. The sampler runs in the order
transformers and vLLM apply it, raw -> temperature -> top-k -> top-p, renormalising after each
cut; top-p keeps the smallest set of most likely tokens whose mass reaches p (the token that
crosses p is kept), top-k keeps every token tied with the k-th. Pure functions on tensors, in
float64 so that tiny probabilities survive the cuts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .types import NextToken, Sampler, SamplerEntry

STAGES = ("temperature", "top-k", "top-p")
SHOWN = 20  # tokens listed by raw probability; the rest is one remainder


def sampler_stages(logits: torch.Tensor, sampler: Sampler) -> list[torch.Tensor]:
    """[raw, after temperature, after top-k, after top-p] probabilities of one row of logits (float64).

    Example: sampler_stages(torch.tensor([2., 1., 0.]), Sampler(top_k=1))[-1] -> tensor([1., 0., 0.])
    """
    row = logits.double().flatten()
    raw = torch.softmax(row, -1)
    if sampler.temperature == 0:  # greedy: everything on the most likely token
        warm = torch.zeros_like(raw)
        warm[int(raw.argmax())] = 1.0
    else:
        warm = torch.softmax(row / sampler.temperature, -1)
    out = [raw, warm]
    if 0 < sampler.top_k < row.numel():
        kth = warm.topk(sampler.top_k).values[-1]
        warm = _renormalised(torch.where(warm >= kth, warm, 0.0))
    out.append(warm)
    if sampler.top_p < 1:
        order = warm.argsort(descending=True, stable=True)
        before = warm[order].cumsum(0) - warm[order]  # mass of the tokens ranked above each
        keep = torch.zeros_like(warm, dtype=torch.bool)
        keep[order] = before < sampler.top_p
        warm = _renormalised(torch.where(keep, warm, 0.0))
    out.append(warm)
    return out


def _renormalised(p: torch.Tensor) -> torch.Tensor:
    return p / p.sum()


def next_token(logits: torch.Tensor, sampler: Sampler, text: Callable[[int], str], shown: int = SHOWN) -> NextToken:
    """One row of logits -> the next-token view: the `shown` most likely tokens with their probability
    at every sampler stage, the rest as one remainder, the raw entropy and p(sampling picks greedy's)."""
    stages = sampler_stages(logits, sampler)
    raw = stages[0]
    top = raw.topk(min(shown, raw.numel()))
    ids = top.indices.tolist()
    entries = tuple(SamplerEntry(i, text(i), float(raw[i]), tuple(float(s[i]) for s in stages[1:])) for i in ids)
    kept = set(ids)
    rest = tuple(float(s.sum() - s[top.indices].sum()) if len(kept) < raw.numel() else 0.0 for s in stages)
    logp = torch.log_softmax(logits.double().flatten(), -1)
    entropy = float(-(raw * logp).nan_to_num().sum())
    greedy = int(raw.argmax())
    return NextToken(entries, rest[0], rest[1:], entropy, float(stages[-1][greedy]), greedy, sampler)


def p_greedy_from_top(top_logprobs: Sequence[float], sampler: Sampler) -> float | None:
    """p(the sampler picks the most likely token) from a step's kept top-k log-probabilities alone,
    or None where they cannot represent the cut (a temperature without a top-k inside the kept
    ones, a top-k wider than them, a top-p the kept mass does not reach): then the full row is needed.

    Example: p_greedy_from_top([-0.1, -2.5], Sampler(top_k=2)) -> 0.916...
    """
    lps = sorted(top_logprobs, reverse=True)
    if not lps:
        return None
    if sampler.temperature == 0:
        return 1.0
    if 0 < sampler.top_k <= len(lps):  # the cut lies inside the kept ones: renormalise over them
        warm = [math.exp((x - lps[0]) / sampler.temperature) for x in lps[: sampler.top_k]]
        probs = [w / sum(warm) for w in warm]
    elif sampler.temperature == 1 and sampler.top_k == 0 and sum(math.exp(x) for x in lps) >= sampler.top_p:
        probs = [math.exp(x) for x in lps]  # the raw probabilities; top-p's set lies inside the kept ones
    else:
        return None
    if sampler.top_p < 1:
        before, cut = 0.0, []
        for p in probs:
            if before >= sampler.top_p:
                break
            cut.append(p)
            before += p
        return cut[0] / sum(cut)
    return probs[0]


def p_greedy_rows(logits: torch.Tensor, sampler: Sampler) -> torch.Tensor:
    """p(the sampler picks the most likely token) for each row of logits [c, vocab] -> [c] float64,
    without sorting whole rows: top-p needs only the most likely tokens up to its mass (found by
    widening a top-k until every row's reaches p)."""
    rows = logits.double()
    if sampler.temperature == 0:
        return torch.ones(rows.shape[0], dtype=torch.float64)
    warm = torch.softmax(rows / sampler.temperature, -1)
    if 0 < sampler.top_k < warm.shape[-1]:
        kth = warm.topk(sampler.top_k, -1).values[:, -1:]
        warm = torch.where(warm >= kth, warm, 0.0)
        warm = warm / warm.sum(-1, keepdim=True)
    if sampler.top_p >= 1:
        return warm.max(-1).values
    k = min(64, warm.shape[-1])
    while True:  # the most likely k of each row, sorted, until their mass reaches p everywhere
        top = warm.topk(k, -1).values
        if k == warm.shape[-1] or bool((top.sum(-1) >= sampler.top_p).all()):
            break
        k = min(k * 8, warm.shape[-1])
    before = top.cumsum(-1) - top
    kept = torch.where(before < sampler.top_p, top, 0.0).sum(-1)
    return top[:, 0] / kept
