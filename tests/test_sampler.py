"""The sampler lens against independent references: transformers' own logits warpers (temperature,
top-k, top-p, applied in that order as `generate` does) and a plain-Python float64 softmax."""

from __future__ import annotations

import math
import random

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from greedyscore.sampler import next_token, p_greedy_from_top, p_greedy_rows, sampler_stages
from greedyscore.stats import divergence
from greedyscore.types import Sampler

SAMPLERS = [Sampler(), Sampler(0.7), Sampler(1.5, 5), Sampler(1.0, 0, 0.9), Sampler(0.8, 10, 0.5),
            Sampler(2.0, 3, 0.3), Sampler(1.0, 1), Sampler(0.5, 0, 0.99)]


def reference(logits: torch.Tensor, s: Sampler) -> torch.Tensor:
    """transformers' warpers on a float64 row, then softmax: what `generate(do_sample=True)` samples from."""
    scores = logits.double().view(1, -1)
    if s.temperature != 1:
        scores = TemperatureLogitsWarper(s.temperature)(None, scores)
    if s.top_k:
        scores = TopKLogitsWarper(s.top_k)(None, scores)
    if s.top_p < 1:
        scores = TopPLogitsWarper(s.top_p)(None, scores)
    return torch.softmax(scores, -1)[0]


def rows(n: int = 6, vocab: int = 300) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randn(vocab, generator=g) * (1 + i) for i in range(n)]


@pytest.mark.parametrize("s", SAMPLERS, ids=str)
def test_stages_end_where_transformers_warpers_do(s: Sampler) -> None:
    for row in rows():
        ours = sampler_stages(row, s)[-1]
        assert torch.allclose(ours, reference(row, s), atol=1e-12), s


def test_raw_stage_is_a_plain_python_softmax() -> None:
    row = rows(1)[0]
    xs = row.tolist()
    m = max(xs)
    z = sum(math.exp(x - m) for x in xs)
    raw = sampler_stages(row, Sampler(0.5, 3, 0.5))[0]
    assert max(abs(raw[i].item() - math.exp(x - m) / z) for i, x in enumerate(xs)) < 1e-15


def test_top_p_keeps_the_token_that_crosses_p() -> None:
    row = torch.tensor([0.5, 0.3, 0.2]).log()
    assert sampler_stages(row, Sampler(top_p=0.6))[-1].tolist() == pytest.approx([0.625, 0.375, 0.0])
    assert sampler_stages(row, Sampler(top_p=0.5))[-1].tolist() == pytest.approx([1.0, 0.0, 0.0])


def test_top_k_keeps_ties_with_the_kth() -> None:
    row = torch.tensor([3.0, 1.0, 1.0, 0.0])
    assert (sampler_stages(row, Sampler(top_k=2))[-1] > 0).tolist() == [True, True, True, False]


def test_temperature_zero_is_greedy() -> None:
    row = rows(1)[0]
    view = next_token(row, Sampler(0.0, 0, 0.9), str)
    assert view.p_greedy == 1.0 and view.greedy_id == int(row.argmax())


@pytest.mark.parametrize("s", SAMPLERS, ids=str)
def test_next_token_lists_the_most_likely_and_the_rest(s: Sampler) -> None:
    row = rows(1)[0]
    view = next_token(row, s, lambda i: f"<{i}>")
    ref_raw, ref_sampled = torch.softmax(row.double(), -1), reference(row, s)
    order = sorted(range(len(row)), key=lambda i: -ref_raw[i].item())[:20]
    assert [e.id for e in view.top] == order
    assert all(e.text == f"<{e.id}>" for e in view.top)
    assert all(e.raw == pytest.approx(ref_raw[e.id].item(), abs=1e-12) for e in view.top)
    assert all(e.sampled == pytest.approx(ref_sampled[e.id].item(), abs=1e-12) for e in view.top)
    assert view.rest_raw + sum(e.raw for e in view.top) == pytest.approx(1.0, abs=1e-12)
    assert view.rest_stages[-1] == pytest.approx(1.0 - sum(ref_sampled[i].item() for i in order), abs=1e-12)
    assert view.p_greedy == pytest.approx(ref_sampled[order[0]].item(), abs=1e-12)
    assert view.entropy == pytest.approx(-(ref_raw * ref_raw.log()).sum().item(), abs=1e-9)
    assert view.to_json()["top"][0].keys() >= {"id", "text", "raw", "sampled"}


@pytest.mark.parametrize("s", SAMPLERS, ids=str)
def test_p_greedy_from_the_kept_top_k_is_exact_or_refused(s: Sampler) -> None:
    for row in rows():
        full = reference(row, s)[int(row.argmax())].item()
        lp = torch.log_softmax(row.double(), -1)
        for kept in (5, 20):
            got = p_greedy_from_top(lp.topk(kept).values.tolist(), s)
            if got is not None:
                assert got == pytest.approx(full, abs=1e-9), (s, kept)
    # the cases the kept ones cannot represent
    lp = torch.log_softmax(rows(1)[0].double(), -1).topk(5).values.tolist()
    assert p_greedy_from_top(lp, Sampler(0.7)) is None  # temperature over the whole vocabulary
    assert p_greedy_from_top(lp, Sampler(1.0, 50)) is None  # top-k wider than the kept 5
    assert p_greedy_from_top(lp, Sampler(1.0, 3)) is not None


def test_divergence_against_a_simulation() -> None:
    p = [0.9, 0.99, 0.6, 1.0, 0.8]
    d = divergence(p)
    rng = random.Random(3)
    n, agree, same = 40_000, 0, 0
    for _ in range(n):
        k = next((i for i, x in enumerate(p) if rng.random() >= x), len(p))
        agree += k
        same += k == len(p)
    assert d.expected_agree == pytest.approx(agree / n, abs=0.03)
    assert d.p_same == pytest.approx(same / n, abs=0.01)
    assert d.expected_differ == pytest.approx(sum(1 - x for x in p))


@pytest.mark.parametrize("s", SAMPLERS + [Sampler(0.0), Sampler(1.0, 0, 0.999999)], ids=str)
def test_p_greedy_of_many_rows_equals_the_stage_by_stage_one(s: Sampler) -> None:
    batch = torch.stack(rows(6, 5000))
    got = p_greedy_rows(batch, s)
    for row, p in zip(batch, got):
        want = 1.0 if s.temperature == 0 else reference(row, s)[int(row.argmax())].item()  # 0: greedy itself
        assert p.item() == pytest.approx(want, abs=1e-12)
