"""Per-step divergence: its maths on rows worked by hand, rows that arrive in other chunk sizes on the
two sides, the refusals (another tokenizer, a server engine), and how it is shown. The comparisons
on real configurations (system prompts, bfloat16) against plain forwards are in test_compare.py."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from greedyscore.align import Divergence, Step, compare
from greedyscore.divergence import CHUNK, divergence, step_rows, undefined_reason
from greedyscore.errors import Unsupported
from greedyscore.render.compare import compare_html, divergence_figure
from greedyscore.service import Service
from greedyscore.types import Message, ReplyStats, ScoredReply, ScoredToken, Settings, Timings

PIRATE = [Message("system", "You are a pirate. Answer like one."), Message("user", "Tell me about Paris.")]
PLAIN = [Message("user", "Tell me about Paris.")]
LONG = ("Paris is the capital of France. It stands on the Seine, and its museums, bridges, cafes and old streets "
        "draw visitors from every country. The Louvre holds the Mona Lisa; the Eiffel Tower was built in 1889 for the "
        "world's fair, and was meant to stand for twenty years only.")


def test_kl_overlap_and_argmax_of_rows_worked_by_hand():
    # A: p = (1/4, 3/4); B: p = (q, 1 - q), q = e^0.5 / (e^0.5 + 1)
    a, b = torch.tensor([[0.0, math.log(3)]], dtype=torch.float64), torch.tensor([[0.5, 0.0]])
    q = math.exp(0.5) / (math.exp(0.5) + 1)
    kl, overlap, arg_a, arg_b = step_rows(a, b, 1)
    assert kl == pytest.approx([0.25 * math.log(0.25 / q) + 0.75 * math.log(0.75 / (1 - q))], rel=1e-12)
    assert overlap == [0.0] and arg_a == [1] and arg_b == [0]
    assert step_rows(a, b, 2)[1] == [1.0]
    # an id A rules out (-inf) adds nothing; one B rules out where A does not makes it infinite
    kl, *_ = step_rows(torch.tensor([[0.0, -math.inf], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [0.0, -math.inf]]), 2)
    assert kl[0] == pytest.approx(math.log(2), rel=1e-12) and kl[1] == math.inf
    # top-3 of 5 ids: A {4, 3, 2}, B {0, 3, 4} -> 2 shared
    kl, overlap, arg_a, arg_b = step_rows(torch.tensor([[0.0, 1, 2, 3, 4]]), torch.tensor([[9.0, 0, 1, 5, 4]]), 3)
    assert overlap == [pytest.approx(2 / 3)] and (arg_a, arg_b) == ([4], [0]) and kl[0] > 0


def reply(ids: list[int], texts: list[str] | None = None) -> ScoredReply:
    texts = texts or [f"t{i}" for i in ids]
    tokens = tuple(ScoredToken(id=i, text=t, special=False, prob=0.5, logprob=math.log(0.5), rank=1, entropy=0.0,
                               margin=0.0, top=()) for i, t in zip(ids, texts))
    return ScoredReply(model="m", backend="transformers", text="".join(texts), prompt_token_ids=(1,), tokens=tokens,
                       stats=ReplyStats(len(ids), 0.0, 1.0, 1.0), timings=Timings(0.0, 0.0))


def test_another_tokenizer_or_vocabulary_gives_the_reason_and_asks_no_model(service):
    a = reply([5, 6, 7], ["ab", "c", "d"])
    why = undefined_reason(a, reply([8, 9], ["a", "bcd"]), 100, 100)
    assert why.startswith("per-step divergence needs one tokenizer: A splits the text into 3 tokens, B into 2")
    assert "span view" in why
    assert "3 tokens each, but different ones" in undefined_reason(a, reply([5, 6, 8], ["ab", "c", "d"]), 100, 100)
    assert "one vocabulary: A's has 100 ids, B's 200" in undefined_reason(a, a, 100, 200)
    assert undefined_reason(a, a, 100, 100) == ""
    # ids past the real model's vocabulary would fail a forward: the refusal comes first
    assert divergence(service, a, service, reply([10**9, 1], ["a", "bcd"]), 5) == (None, why)


class Rechunked:
    """The real engine, its logit rows handed on in chunks of `rows` (as another engine's might come)."""

    def __init__(self, engine, rows: int) -> None:
        self.inner, self.rows = engine, rows
        self.info, self.tokenizer = engine.info, engine.tokenizer

    def decoder(self, max_rows: int = 16):
        return self.inner.decoder(max_rows)

    def logits(self, ids, start, cache=None):
        for chunk in self.inner.logits(ids, start):
            yield from chunk.split(self.rows)


class Refusing(Rechunked):
    def logits(self, ids, start, cache=None):  # a server's: refused at the call, as engines/openai.py does
        raise Unsupported("a server sends only its top logprobs")


def test_rows_in_other_chunk_sizes_on_each_side_give_the_same_steps(service, engine):
    settings = Settings(top_k=4)
    a, b = service.score_text(LONG, settings, messages=PLAIN), service.score_text(LONG, settings, messages=PIRATE)
    assert len(a.tokens) > CHUNK and len(a.tokens) % 16  # two pulls a side, the last chunk shorter than the rest
    same, why = divergence(service, a, service, b, 4)
    assert why == "" and same is not None and len(same.steps) == len(a.tokens)
    with Service(Rechunked(engine, 5)) as fives, Service(Rechunked(engine, 23)) as odd:
        for side_a, side_b in ((fives, odd), (service, fives), (odd, service)):
            found, why = divergence(side_a, a, side_b, b, 4)
            assert why == "" and found == same  # the same rows, whatever chunks they came in
    assert any(s.kl > 0.05 for s in same.steps) and same.k == 4


def test_a_server_engine_gives_the_reason(service, engine):
    a = service.score_text("Paris.", messages=PLAIN)
    with Service(Refusing(engine, 16)) as server:
        found, why = divergence(service, a, server, a, 5)
    assert found is None and why.startswith("per-step divergence is not available here: a server sends only")


def shown(ids: list[int], texts: list[str]) -> tuple:
    a = reply(ids, texts)
    steps = (Step(0.5, 1.0, 7, 7, "<i>", "<i>"), Step(2.0, 0.4, 7, 8, "<i>", "<script>"),
             Step(0.1, 0.6, 3, 4, "x", "y"))
    return compare(a, a, "A <m>", "B"), Divergence(steps, 5)


def test_the_summary_and_chart_show_the_steps_escaped():
    cmp, d = shown([5, 6, 7], ["<b>", " a", "\u202eb"])
    page = compare_html(replace(cmp, divergence=d))
    assert 'class="gs-cmp-kl"' in page and 'class="gs-cmp-kl-summary"' in page and "gs-cmp-strip" in page
    assert "<script>" not in page and "<i>" not in page and "<b>" not in page.replace("<b>A:</b>", "").replace(
        "<b>B:</b>", "")
    assert "&lt;script&gt;" in page and "largest 2 nats at token #1" in page and "mean KL 0.867" in page
    assert '<span class="gs-cmp-kl-differs">2</span> of 3 tokens' in page and "overlap 67% on average" in page
    fig = divergence_figure(replace(cmp, divergence=d))
    kl, marks, overlap = fig.data
    assert list(kl.y) == [0.5, 2.0, 0.1] and list(marks.x) == [1, 2] and list(marks.y) == [2.0, 0.1]
    assert list(overlap.y) == [1.0, 0.4, 0.6] and overlap.yaxis == "y2"
    assert all("<script>" not in h and "<b>" not in h for h in kl.hovertext)
    assert "\u202e" not in page + fig.to_json() and "\\u202eb" in page  # a direction control shown as a mark
    data = replace(cmp, divergence=d).to_json()
    assert [s["greedy_differs"] for s in data["steps"]] == [False, True, True] and data["max_kl_at"] == 1
    assert set(data["steps"][0]) == {"kl", "overlap", "greedy_differs", "argmax_a", "argmax_b"}


def test_without_steps_the_reason_is_shown_escaped_and_the_span_view_stays():
    cmp, _ = shown([5, 6, 7], ["a", "b", "c"])
    assert "gs-cmp-kl" not in compare_html(cmp)  # none asked for: nothing to say
    cmp = replace(cmp, no_divergence="needs <one> tokenizer")
    page = compare_html(cmp)
    assert "gs-cmp-kl-none" in page and "needs &lt;one&gt; tokenizer" in page and "gs-cmp-strip" in page
    assert "gs-cmp-kl-summary" not in page
    fig = divergence_figure(cmp)
    assert not fig.data and fig.layout.annotations[0].text == "needs &lt;one&gt; tokenizer"
    data = cmp.to_json()
    assert data["steps"] is None and data["mean_kl"] is None and data["divergence_note"] == "needs <one> tokenizer"
