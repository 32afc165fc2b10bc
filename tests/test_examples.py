"""The demo's examples on the embedded model: each answers sensibly; the loop example loops."""

from __future__ import annotations

from collections import Counter

import pytest

from greedyscore.examples import CHAT_EXAMPLES, SCORE_EXAMPLES
from greedyscore.types import Message, Settings

N_NEW = 64


def repeats(ids: list[int], n: int = 8) -> int:
    """How often the commonest n-gram of token ids occurs."""
    grams = Counter(tuple(ids[i : i + n]) for i in range(len(ids) - n + 1))
    return max(grams.values(), default=0)


@pytest.mark.parametrize("example", CHAT_EXAMPLES, ids=lambda e: e.label)
def test_chat_example(example, service):
    reply = service.chat([Message("user", example.prompt)], Settings(max_new_tokens=N_NEW))
    ids = [t.id for t in reply.tokens]
    if example.loops:
        assert repeats(ids) >= 3, reply.text  # still the repetition loop its label promises
        return
    assert repeats(ids) <= 2, reply.text  # no loop
    assert "\ufffd" not in reply.text and len(reply.text.strip()) >= 5
    if any("\u4e00" <= ch <= "\u9fff" for ch in example.prompt):
        assert any("\u4e00" <= ch <= "\u9fff" for ch in reply.text), reply.text  # Chinese in, Chinese out


@pytest.mark.parametrize("text", SCORE_EXAMPLES)
def test_score_examples_round_trip(text, service):
    reply = service.score_text(text)
    assert reply.text == text and "\ufffd" not in "".join(t.text for t in reply.tokens)
