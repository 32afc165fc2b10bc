"""Calibration of top-1 predictions: a hand-computed example, a perfectly calibrated synthetic set,
and a brute-force recomputation on a real scored text (from the model's own logits)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from greedyscore.calibration import calibration
from greedyscore.examples import CALIBRATION_SAMPLE
from greedyscore.render.calibration import calibration_html, reliability_figure
from greedyscore.types import Alternative, ScoredToken, Settings


def position(top1: float, right: bool) -> ScoredToken:
    """A teacher-forced position whose top-1 has probability top1; the real token is it or the runner-up."""
    second = min(top1, 1 - top1) / 2  # below top1 always
    real, prob = (1, top1) if right else (2, second)
    return ScoredToken(id=real, text="x", special=False, prob=prob, logprob=math.log(prob), rank=1 if right else 2,
                       entropy=1.0, margin=top1 - second, top=(Alternative(1, "a", top1), Alternative(2, "b", second)))


def test_hand_computed_example():
    cal = calibration([position(0.95, True), position(0.92, False), position(0.55, True), position(0.15, False)])
    by_lo = {round(b.lo, 1): b for b in cal.bins if b.n}
    assert set(by_lo) == {0.9, 0.5, 0.1}
    assert by_lo[0.9].n == 2 and by_lo[0.9].confidence == pytest.approx(0.935) and by_lo[0.9].accuracy == 0.5
    # ECE = 2/4 |0.5 - 0.935| + 1/4 |1 - 0.55| + 1/4 |0 - 0.15|
    assert cal.ece == pytest.approx(0.5 * 0.435 + 0.25 * 0.45 + 0.25 * 0.15)
    assert cal.brier == pytest.approx((0.05**2 + 0.92**2 + 0.45**2 + 0.15**2) / 4)
    assert cal.accuracy == 0.5 and cal.n == 4 and len(cal.bins) == 10


def test_a_perfectly_calibrated_set_has_ece_near_zero():
    rng = random.Random(0)
    tokens = []
    for _ in range(20000):
        p = rng.uniform(0.05, 1.0)
        tokens.append(position(p, rng.random() < p))
    assert calibration(tokens).ece < 0.02
    overconfident = [position(0.95, rng.random() < 0.5) for _ in range(2000)]
    assert calibration(overconfident).ece > 0.4


def test_a_real_text_matches_a_brute_force_computation(engine, service):
    """Top-1 probability and correctness from the full logits of one forward pass, binned by hand."""
    reply = service.score_text(CALIBRATION_SAMPLE, Settings(top_k=3))
    context, target = engine.tokenizer.text_ids(CALIBRATION_SAMPLE)
    ids = torch.tensor([context + target])
    with torch.inference_mode():
        probs = torch.softmax(engine.model(ids).logits[0, len(context) - 1 : -1].float(), dim=-1)
    conf, pred = probs.max(dim=-1)
    right = (pred == torch.tensor(target)).float()
    bins = torch.tensor([min(int(c * 10 + 1e-9), 9) for c in conf.double().tolist()])  # [i/10, (i+1)/10)
    ece = sum(float((bins == b).sum()) / len(target) * abs(float(right[bins == b].mean() - conf[bins == b].mean()))
              for b in range(10) if (bins == b).any())
    cal = reply.calibration
    assert cal.n == len(target) >= 400
    assert cal.ece == pytest.approx(ece, abs=1e-4)
    assert cal.brier == pytest.approx(float(((conf - right) ** 2).mean()), abs=1e-4)
    assert [b.n for b in cal.bins] == [int((bins == b).sum()) for b in range(10)]
    assert reply.to_json()["calibration"]["ece"] == cal.ece


def test_short_text_says_it_is_too_short_and_the_figure_has_a_legend():
    cal = calibration([position(0.95, True), position(0.5, False)])
    assert "too few" in calibration_html(cal)
    fig = reliability_figure(cal)
    assert [t.name for t in fig.data] == ["accuracy (top-1 was the real token)", "mean confidence in the bin",
                                          "perfectly calibrated"]
    assert [b.n for b in cal.bins if b.n] == [1, 1] and fig.data[0].y == (0.0, 1.0)  # bins 5 and 9
