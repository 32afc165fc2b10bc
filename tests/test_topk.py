"""Scores from a server's top-k: checked against brute-force softmax of random distributions."""

from __future__ import annotations

import math

import pytest
import torch

from greedyscore.engines.openai_wire import check_raw
from greedyscore.errors import ServerRefused
from greedyscore.topk import ServerStep, entropy_bounds, step_scores


def distributions(vocab: int, seed: int):
    """Peaked to flat distributions over `vocab` tokens, as logprobs."""
    g = torch.Generator().manual_seed(seed)
    for temperature in (0.2, 1.0, 3.0, 10.0):
        yield torch.log_softmax(torch.randn(vocab, generator=g, dtype=torch.float64) * temperature, dim=-1)


def true_entropy(lp: torch.Tensor) -> float:
    return float(-(lp.exp() * lp).sum())


@pytest.mark.parametrize("vocab", [3, 50, 1000])
@pytest.mark.parametrize("k", [1, 2, 5, 20])
def test_true_entropy_lies_inside_the_interval(vocab, k):
    for seed in range(5):
        for lp in distributions(vocab, seed):
            top = lp.topk(min(k, vocab)).values.exp().tolist()
            low, high = entropy_bounds(top, vocab)
            h = true_entropy(lp)
            assert low - 1e-9 <= h <= high + 1e-9, (low, h, high)
            assert high <= math.log(vocab) + 1e-9


def test_bounds_are_reached_by_the_extreme_distributions():
    """Lower: the residual piled into tokens as large as the k-th; upper: spread evenly."""
    top, vocab = [0.5, 0.2, 0.1], 10
    low, high = entropy_bounds(top, vocab)
    piled = [*top, 0.1, 0.1]  # residual 0.2 = two tokens at the cap 0.1
    spread = [*top, *[0.2 / 7] * 7]
    assert low == pytest.approx(-sum(p * math.log(p) for p in piled))
    assert high == pytest.approx(-sum(p * math.log(p) for p in spread))


def test_a_full_list_is_exact():
    lp = next(distributions(200, 1))
    top = lp.exp().tolist()
    assert entropy_bounds(top, 200) == pytest.approx((true_entropy(lp),) * 2, abs=1e-9)


@pytest.mark.parametrize("full", [True, False])
def test_step_scores_match_brute_force_softmax(full):
    vocab, k = 300, 4
    steps, refs = [], []
    for seed in range(6):
        lp = list(distributions(vocab, seed))[1]
        chosen = int(lp.argmax()) if seed % 2 else int(lp.argsort(descending=True)[7])  # greedy, and a rank-8 token
        listed = range(vocab) if full else lp.topk(k).indices.tolist()
        top = {int(i): float(lp[i]) for i in listed}
        if not full and seed % 2 == 0:
            top.pop(chosen, None)  # LMDeploy leaves the chosen token out; vLLM appends it: both merge back
        rank = int((lp > lp[chosen]).sum()) + 1
        steps.append(ServerStep(chosen, float(lp[chosen]), top, rank=None if seed % 2 else rank, full=full))
        refs.append((lp, chosen, rank))
    scores = step_scores(steps, k, vocab)
    for i, (lp, chosen, rank) in enumerate(refs):
        p = lp.exp()
        assert scores.logprob[i].item() == pytest.approx(float(lp[chosen]), abs=1e-6)
        assert scores.rank[i].item() == rank
        assert scores.margin[i].item() == pytest.approx(float(p.topk(2).values[0] - p.topk(2).values[1]), abs=1e-6)
        assert scores.top_ids[i].tolist() == lp.topk(k).indices.tolist()
        h = true_entropy(lp)
        if full:
            assert scores.entropy[i].item() == pytest.approx(h, abs=1e-4) == scores.entropy_max[i].item()
        else:
            assert scores.entropy[i].item() - 1e-4 <= h <= scores.entropy_max[i].item() + 1e-4
            assert scores.entropy_max[i].item() > scores.entropy[i].item()


def test_short_lists_are_padded_and_dropped_from_alternatives():
    scores = step_scores([ServerStep(3, -0.1, {3: -0.1})], 3, 10)
    assert scores.top_ids[0].tolist() == [3, -1, -1]


def test_raw_logprobs_pass():
    check_raw(ServerStep(5, -0.2, {5: -0.2, 6: -2.0, 7: -3.5}), 0, 3)
    check_raw(ServerStep(5, 0.0, {5: 0.0, 6: -17.0}), 0, 3)  # a float32 certainty is not refused


@pytest.mark.parametrize("step, needle", [
    (ServerStep(5, 0.0, {}), "TurboMind"),  # renormalised after top_k=1, the chosen token removed
    (ServerStep(5, 0.0, {5: 0.0, 6: -9999.0}), "TurboMind"),
    (ServerStep(5, -0.1, {5: -0.1, 6: -0.5}), "add up to"),  # 0.90 + 0.61: renormalised within the top-k
    (ServerStep(5, -1.2, {5: -1.2, 6: -0.5}), "not the most likely"),  # penalties moved the greedy path
])
def test_fake_numbers_are_refused_with_the_fix(step, needle):
    with pytest.raises(ServerRefused, match=needle) as info:
        check_raw(step, 0, 3)
    assert "raw_logprobs" in str(info.value)


def test_an_alternative_with_no_probability_does_not_break_the_bounds():
    """vLLM floors logprobs at -9999 (p = 0): such an entry bounds nothing."""
    scores = step_scores([ServerStep(5, -0.1, {5: -0.1, 6: -9999.0})], 2, 100)
    assert 0 < scores.entropy[0].item() < scores.entropy_max[0].item() <= math.log(100)


def test_full_vocabulary_that_is_not_whole_is_refused():
    with pytest.raises(ServerRefused, match="max-logprobs -1"):
        check_raw(ServerStep(5, -0.5, {5: -0.5, 6: -1.5}, full=True), 0, 2)
