"""Shared results as data, on the real model: stored and read back exactly, re-run and compared,
malformed documents refused with a message, hostile text escaped."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from html.parser import HTMLParser

import pytest

from greedyscore.conversation import ORIGINAL, Conversation
from greedyscore.errors import BadInput
from greedyscore.render import View
from greedyscore.render.share_page import reproduction_html, shared_header_html, shared_view
from greedyscore.requests import Rerun, ScoreIds
from greedyscore.service import last, prompt_matches
from greedyscore.sharing.document import (
    MAX_SHARED_CELLS,
    MAX_SHARED_CHARS,
    SharedItem,
    reproduction,
    rerun_plan,
    settings_of,
    share_reply,
    share_reply_json,
    share_text,
    share_turn,
)
from greedyscore.sharing.reply_json import reply_from_json
from greedyscore.types import MAX_TOP_K, Message, Settings
from greedyscore.ui import Sharing

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)> & "q" \u4f60\u597d \U0001f600'
NOW = 1_790_000_000.0


def stored(item: SharedItem) -> SharedItem:
    """Through JSON text, as the store keeps it."""
    return SharedItem.from_json(json.loads(json.dumps(item.to_json(), ensure_ascii=True)))


@pytest.fixture(scope="module")
def conversation(service) -> Conversation:
    """Two turns, a fork of the second (a character split over tokens in the first turn's reply)."""
    settings = Settings(max_new_tokens=12, top_k=3, verify=True)
    conv = Conversation().ask("你好，请介绍一下北京。")
    conv = conv.answer(service.chat(conv.messages(0), settings))
    conv = conv.ask("What is the capital of France?")
    reply = service.chat(conv.messages(1), settings)
    conv = conv.answer(reply)
    fork = service.fork(conv.messages(1), [t.id for t in reply.tokens], 1, reply.tokens[1].top[1].id, settings)
    return conv.add_fork(1, ORIGINAL, 1, reply.tokens[1].top[1].id, fork)


def test_reply_json_round_trips_every_field(conversation, service):
    for turn in conversation.turns:
        assert reply_from_json(json.loads(json.dumps(turn.reply.to_json()))) == turn.reply
    assert any(t.joined for t in conversation.turns[0].reply.tokens)  # split characters kept
    text = service.score_text("Paris is the capital of France.", Settings(top_k=4), prompt="Capital?")
    assert reply_from_json(json.loads(json.dumps(text.to_json()))) == text  # calibration included


def test_a_shared_turn_and_a_shared_fork_come_back_as_they_were(conversation, service):
    turn = share_turn(conversation, 1, ORIGINAL, service.identity, NOW)
    again = stored(turn)
    assert again.reply == conversation.turns[1].reply
    assert again.messages == tuple(conversation.messages(1))
    assert again.conversation.turns == conversation.turns[:2] and again.conversation.selected == 1
    assert again.model.weights.startswith("sha256:") and len(again.model.weights) == 71
    fork = stored(share_turn(conversation, 1, 1, service.identity, NOW))
    assert fork.reply == conversation.turns[1].fork(1).reply and fork.reply.forked_at == 1
    assert fork.conversation.shown == 1
    first = stored(share_turn(conversation, 0, ORIGINAL, service.identity, NOW))
    assert len(first.conversation.turns) == 1  # later turns are not part of an earlier turn's share


def test_settings_that_reproduce_a_reply():
    def reply_with(n: int, finish: str, k: int):
        from greedyscore.types import Alternative, ReplyStats, ScoredReply, ScoredToken, Timings

        tok = ScoredToken(1, "a", False, 0.5, -0.69, 1, 0.1, 0.1, tuple(Alternative(i, "a", 0.1) for i in range(k)))
        return ScoredReply("m", "b", "a" * n, (1,), (tok,) * n, ReplyStats(n, -0.69, 2.0, 0.5), Timings(0, 0), finish)

    assert settings_of(reply_with(7, "length", 3)) == Settings(7, 3, False)  # cut at the limit: exactly that
    assert settings_of(reply_with(7, "stop", 20)) == Settings(7, 20, False)  # ended by itself: it ends there again
    assert settings_of(reply_with(0, "abort", 2)).max_new_tokens == 1


def rerun(service, item: SharedItem):
    plan = rerun_plan(item)
    if item.kind == "text":
        return last(service.run(ScoreIds(plan.prompt, plan.target, plan.settings)))
    return last(service.run(Rerun(plan.prompt, plan.settings, plan.forced, plan.forked_at, item.messages)))


def test_rerun_reproduces_a_turn_a_fork_and_a_text(conversation, service):
    for node in (ORIGINAL, 1):
        item = stored(share_turn(conversation, 1, node, service.identity, NOW))
        rep = reproduction(item.reply, rerun(service, item), 1e-3)
        assert rep.reproduced and rep.same_ids and rep.max_dp < 1e-4, rep
    reply = service.score_text("The quick brown fox jumps over the lazy dog.", Settings(top_k=3))
    item = stored(share_text(reply, (), service.identity, NOW))
    rep = reproduction(item.reply, rerun(service, item), 1e-3)
    assert rep.reproduced and rep.n_now == len(reply.tokens)


def test_a_tampered_result_is_not_reproduced_and_the_report_says_where(conversation, service):
    item = stored(share_turn(conversation, 1, ORIGINAL, service.identity, NOW))
    tokens = list(item.reply.tokens)
    tokens[2] = replace(tokens[2], prob=tokens[2].prob - 0.25)  # a forged probability
    forged = replace(item, reply=replace(item.reply, tokens=tuple(tokens)))
    rep = reproduction(forged.reply, rerun(service, forged), 1e-3)
    assert rep.same_ids and not rep.reproduced and rep.at_max == 2 and rep.max_dp == pytest.approx(0.25, abs=1e-4)
    tokens[2] = replace(tokens[2], id=tokens[2].id + 1, text="XX")  # a forged token
    forged = replace(item, reply=replace(item.reply, tokens=tuple(tokens)))
    now = rerun(service, forged)
    rep = reproduction(forged.reply, now, 1e-3)
    assert not rep.same_ids and rep.first_difference == 2 and rep.differences[0].stored == "XX"
    assert rep.differences[0].now == now.tokens[2].text
    assert "not reproduced: the reply differs from token 2" in reproduction_html(rep, item.model, service.identity)
    other = replace(service.identity, weights="sha256:" + "0" * 64)
    assert "the weights differ" in reproduction_html(rep, other, service.identity)


def test_an_api_share_does_not_claim_this_servers_weights(conversation, service):
    data = {**conversation.turns[1].reply.to_json(), "messages": [{"role": "user", "content": "x"}]}
    assert share_reply_json(data, service.identity, NOW).model.weights is None  # a client's claim
    made_here = share_reply("chat", conversation.turns[1].reply, (Message("user", "x"),), Settings(), service.identity,
                            NOW)  # what the CLI shares: its own identity
    assert made_here.model == service.identity


def test_rerun_reports_ids_that_are_not_the_template_of_the_messages_shown(conversation, service):
    sharing = Sharing(None, service)
    item = stored(share_turn(conversation, 1, ORIGINAL, service.identity, NOW))
    assert prompt_matches(service, item.messages, item.reply.prompt_token_ids) is True
    swapped = replace(item, messages=(*item.messages[:-1], Message("user", "Something else entirely?")))
    assert prompt_matches(service, swapped.messages, swapped.reply.prompt_token_ids) is False
    html = sharing.rerun(swapped)  # the ids reproduce, but they are not the messages shown
    assert "reproduced from the stored prompt ids, but they are not what this server makes" in html
    assert "gs-repro-bad" in html


def test_a_stopped_reply_is_compared_only_as_far_as_it_went(conversation, service):
    reply = conversation.turns[1].reply
    cut = replace(reply, tokens=reply.tokens[:3], finish_reason="abort")
    item = stored(share_reply_json({**cut.to_json(), "messages": [{"role": "user", "content": "x"}]},
                                   service.identity, NOW))
    assert rerun_plan(item).settings.max_new_tokens == 3
    assert reproduction(item.reply, reply, 1e-3).reproduced


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.pop("tokens"), "has no 'tokens'"),
    (lambda d: d["tokens"][0].update(prob=1.5), "tokens[0].prob must be a number in [0.0, 1.0]"),
    (lambda d: d["tokens"][0].update(prob=float("nan")), "tokens[0].prob"),
    (lambda d: d["tokens"][1].update(id=-3), "tokens[1].id must be a whole number"),
    (lambda d: d["tokens"][0]["top"][0].update(text=7), "top[0].text must be a string"),
    (lambda d: d.update(prompt_token_ids=["<s>"]), "prompt_token_ids must be token ids"),
    (lambda d: d.update(finish_reason="exploded"), "finish_reason must be one of"),
    (lambda d: d.update(settings={"top_k": 99}), "top_k must be a whole number between 1 and 20"),
    (lambda d: d.update(messages=[{"role": "user"}]), 'message 0 must be an object with string "role"'),
])
def test_malformed_reply_json_is_refused_with_the_field_named(conversation, service, change, needle):
    data = {**conversation.turns[1].reply.to_json(), "messages": [{"role": "user", "content": "hi"}]}
    data = json.loads(json.dumps(data))
    change(data)
    with pytest.raises(BadInput, match=needle.replace("[", r"\[").replace("(", r"\(")):
        share_reply_json(data, service.identity, NOW)


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.update(format=99), "newer greedyscore"),
    (lambda d: d.update(kind="movie"), "not a greedyscore shared result"),
    (lambda d: d["conversation"].update(selected=5), "the shared turn is not in it"),
    (lambda d: d["conversation"].update(selected=-1), "the shared turn is not in it"),
    (lambda d: d["conversation"]["turns"][1]["forks"][0].update(parent=7), "a fork needs a new id, parent"),
    (lambda d: d.update(model={"name": 3}), "does not say which model"),
    (lambda d: d.update(created="yesterday"), "no valid time"),
    (lambda d: d.update(created=1e300), "no valid time"),
    (lambda d: d["conversation"]["turns"][1]["forks"].append(d["conversation"]["turns"][1]["forks"][0]),
     "a fork needs a new id"),
    (lambda d: d["conversation"]["turns"][1]["forks"][0].update(id=0), "a fork needs a new id"),
    (lambda d: d["conversation"]["turns"][1]["forks"][0].update(at=0), "a fork's position is not in its paths"),
    (lambda d: d["conversation"]["turns"][1]["forks"][0].pop("forked_at"), "a fork's position is not in its paths"),
    (lambda d: d["conversation"]["turns"][1]["forks"][0].update(forked_at=999), "forked_at is beyond its tokens"),
    (lambda d: d["conversation"].update(turns={"a": 1}), "it has no turns"),
])
def test_malformed_documents_are_refused(conversation, service, change, needle):
    data = json.loads(json.dumps(share_turn(conversation, 1, ORIGINAL, service.identity, NOW).to_json()))
    change(data)
    with pytest.raises(BadInput, match=needle):
        SharedItem.from_json(data)


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)


def test_hostile_stored_text_is_escaped_like_live_text(service):
    from greedyscore.render import View

    messages = [Message("system", HOSTILE), Message("user", HOSTILE)]
    reply = service.chat(messages, Settings(max_new_tokens=6, top_k=2))
    reply = replace(reply, tokens=(replace(reply.tokens[0], text=HOSTILE), *reply.tokens[1:]))
    data = {**reply.to_json(), "model": HOSTILE, "messages": [{"role": m.role, "content": m.content} for m in messages]}
    item = stored(share_reply_json(data, service.identity, NOW))
    assert item.model.name == HOSTILE and item.context[0].content == HOSTILE  # round-trips as text
    head, body, _, _ = shared_view(item, View())
    for html in (head, body):
        parser = Tags()
        parser.feed(html)
        assert not parser.tags & {"script", "img"}
        assert "&lt;script&gt;" in html


def test_sharing_off_says_so(service):
    off = Sharing(None, service)
    item = share_text(service.score_text("Hello there.", Settings(top_k=2)), (), service.identity, NOW)
    with pytest.raises(BadInput, match="sharing is off on this server"):
        off.put(item, None)
    with pytest.raises(BadInput, match="sharing is off"):
        off.get("A" * 22)


def test_header_names_the_model_weights_settings_and_context(conversation, service):
    item = stored(share_turn(conversation, 1, 1, service.identity, NOW))
    head = shared_header_html(item)
    assert "a fork of a chat reply" in head and service.identity.weights[:19] in head
    n_new = len(item.reply.tokens) - 2  # the fork's own tokens after its forced prefix of 2
    assert f"max {n_new} new tokens, top-k 3" in head and "2026-09-21" in head


def hand_token(i: int, p: float = 0.01, **kw) -> dict:
    return {"id": i, "text": "a", "special": False, "prob": p, "logprob": math.log(p), "rank": 5, "entropy": 4.0,
            "margin": 0.2, "top": [], "joined": 0, **kw}


def test_a_client_share_cannot_claim_numbers_its_tokens_do_not_have(service):
    """8 tokens at 1% once showed "999999 tokens, perplexity 1, min probability 100%": what follows
    from the tokens is derived from them on read (stats, text, near ties, calibration)."""
    from greedyscore.render import View

    claimed = {"tokens": [hand_token(i, near_tie=True) for i in range(8)], "prompt_token_ids": [1, 2],
               "model": "m", "backend": "b", "text": "weights verified ok", "verified": True,
               "stats": {"n_tokens": 999999, "mean_logprob": 0.0, "perplexity": 1.0, "min_prob": 1.0},
               "calibration": {"bins": [], "ece": 0.0, "brier": 0.0, "n": 999999, "accuracy": 1.0},
               "messages": [{"role": "user", "content": "x"}], "kind": "text"}
    item = stored(share_reply_json(claimed, service.identity, NOW))
    reply = item.reply
    assert reply.stats.n_tokens == 8 and reply.stats.perplexity == pytest.approx(100.0)
    assert reply.stats.min_prob == pytest.approx(0.01) and reply.text == "a" * 8
    assert not any(t.near_tie for t in reply.tokens)  # no rescoring: nothing to be a near tie of
    cal = reply.calibration
    assert cal.n == 8 and cal.accuracy == 0.0 and sum(b.n for b in cal.bins) == 8
    stats = shared_view(item, View())[3]
    assert "999999" not in stats and "999,999" not in stats and "100%" not in stats


def test_near_ties_follow_from_the_rescored_numbers_by_this_servers_tolerance(service):
    tokens = [hand_token(0, 0.5, rescored_prob=0.5, rescored_rank=1, near_tie=True),
              hand_token(1, 0.5, rescored_prob=0.4, rescored_rank=1, near_tie=False),
              hand_token(2, 0.5, rescored_prob=0.5, rescored_rank=2, near_tie=False)]
    reply = reply_from_json({"tokens": tokens, "prompt_token_ids": [1], "model": "m", "backend": "b", "text": "",
                             "stats": {}, "verified": True})
    assert [t.near_tie for t in reply.tokens] == [False, True, True]


BIG = [2**64, 10**30, 2**31]


@pytest.mark.parametrize("change, needle", [
    *[(lambda d, v=v: d["tokens"][0].update(id=v), "tokens[0].id must be a whole number in") for v in BIG],
    *[(lambda d, v=v: d["tokens"][0]["top"][0].update(id=v), "top[0].id must be a whole number in") for v in BIG],
    (lambda d: d["tokens"][1].update(rank=2**70), "tokens[1].rank must be a whole number in"),
    (lambda d: d["tokens"][1].update(joined=5), "tokens[1].joined must be a whole number in [0, 1]"),
    (lambda d: d.update(prompt_token_ids=[1, 2**64]), "prompt_token_ids must be token ids"),
    (lambda d: d["tokens"][0].update(entropy=1e9), "tokens[0].entropy must be a number in"),
    (lambda d: d["tokens"][0].update(entropy_max=0.0, entropy=1.0), "tokens[0].entropy_max"),
    (lambda d: d.update(timings={"generate_s": 1e300, "score_s": 0}), "timings.generate_s"),
    (lambda d: d.update(settings={"max_new_tokens": 2**62}), "max_new_tokens is beyond"),
    (lambda d: d["tokens"][0].update(prob=0.999), "prob and exp(logprob) disagree"),
    (lambda d: d["tokens"][0].update(margin=0.0), "the margin and its top two alternatives disagree"),
    (lambda d: d["tokens"][0]["top"].reverse(), "top is not in order of probability"),
    (lambda d: d["tokens"][0]["top"][1].update(id=d["tokens"][0]["id"]), "its own entry in top"),
    (lambda d: d["tokens"][0].update(margin=-0.5), "tokens[0].margin must be a number in"),
])
def test_numbers_are_bounded_and_tokens_that_contradict_themselves_are_refused(conversation, service, change,
                                                                               needle):
    data = {**conversation.turns[1].reply.to_json(), "messages": [{"role": "user", "content": "hi"}]}
    data = json.loads(json.dumps(data))
    change(data)
    with pytest.raises(BadInput, match=re.escape(needle)):
        share_reply_json(data, service.identity, NOW)


@pytest.mark.parametrize("field", [2**64, 10**30])
def test_a_fork_id_past_31_bits_is_refused(conversation, service, field):
    data = json.loads(json.dumps(share_turn(conversation, 1, 1, service.identity, NOW).to_json()))
    data["conversation"]["turns"][1]["forks"][0]["id"] = field
    with pytest.raises(BadInput, match="a fork needs a new id"):
        SharedItem.from_json(data)


SURROGATE_PLACES = {
    "a message": lambda d: d["messages"].append({"role": "user", "content": "x\ud800y"}),
    "the model name": lambda d: d["model"].update(name="m\udfff"),
    "a token text": lambda d: d["conversation"]["turns"][1]["tokens"][2].update(text="\udc80"),
    "an alternative": lambda d: d["conversation"]["turns"][1]["tokens"][0]["top"][0].update(text="\ud83d"),
    "a note": lambda d: d["conversation"]["turns"][1].update(notes=["\ud800"]),
    "a user turn": lambda d: d["conversation"]["turns"][1].update(user="hi \udc00"),
    "a key": lambda d: d.update({"\ud800": 1}),
}


@pytest.mark.parametrize("place", SURROGATE_PLACES)
def test_a_lone_surrogate_anywhere_in_a_share_is_refused_with_a_message(conversation, service, place):
    """A stored share with one broke the visitor's page (its response stream died mid-way); a
    client's /share is refused the same way."""
    data = json.loads(json.dumps(share_turn(conversation, 1, 1, service.identity, NOW).to_json()))
    SURROGATE_PLACES[place](data)
    with pytest.raises(BadInput, match="which is not text") as caught:
        SharedItem.from_json(data)
    str(caught.value).encode("utf-8")  # the message itself can be shown
    with pytest.raises(BadInput, match="which is not text"):
        share_reply_json({**data["conversation"]["turns"][1], **({"\ud800": 1} if place == "a key" else {}),
                          "messages": data["messages"], "model": data["model"]["name"]}, service.identity, NOW)


def direction_controls() -> set[str]:
    """Every character that sets the direction of the text after it, by Unicode's own data (not
    the renderer's list): embeddings, overrides, isolates, their terminators, and the marks."""
    import sys
    import unicodedata

    explicit = {"LRE", "RLE", "PDF", "LRO", "RLO", "LRI", "RLI", "FSI", "PDI"}
    found = {chr(c) for c in range(sys.maxunicode + 1) if unicodedata.bidirectional(chr(c)) in explicit}
    return found | {unicodedata.lookup(n) for n in ("LEFT-TO-RIGHT MARK", "RIGHT-TO-LEFT MARK", "ARABIC LETTER MARK")}


def test_direction_controls_never_reach_a_page_or_a_chart_raw(service):
    """U+202E in a model name once made "... weights verified ok" read backwards over the real
    values. Each control, in every field a share carries: shown as a mark; inline fields isolated."""
    from greedyscore.align import compare
    from greedyscore.render import View
    from greedyscore.render.compare import compare_outputs

    controls = direction_controls()
    assert len(controls) >= 12
    spoof = "".join(sorted(controls))
    reply = service.chat([Message("user", "Hi")], Settings(max_new_tokens=4, top_k=2))
    reply = replace(reply, notes=(f"note {spoof} ok",), score_source=f"src {spoof}")
    data = {**reply.to_json(), "model": f"model {spoof} weights verified ok", "backend": f"b {spoof}",
            "messages": [{"role": "system", "content": f"ctx {spoof}"}, {"role": "user", "content": f"msg {spoof}"}]}
    item = stored(share_reply_json(data, service.identity, NOW))
    head, body, fig, stats = shared_view(item, View())
    cmp_html, cmp_fig, _ = compare_outputs(compare(reply, reply, f"A {spoof}", f"B {spoof}"))
    for out in (head, body, stats, fig.to_json(), cmp_html, cmp_fig.to_json()):
        assert not controls & set(out), [hex(ord(c)) for c in controls & set(out)]
    assert "\\u202e" in head and "<bdi>model \\u061c" in head  # visible, and the field isolated
    assert "<bdi>b \\u061c" in stats and "\\u202e" in body


def test_a_share_its_page_cannot_draw_quickly_is_refused_when_made_and_when_read(service):
    """The page budget counts a token and each alternative in its tooltip (bench_share_page measures
    the page at the budget), on every path a share is made and on the way back from a store."""
    reply = service.score_text("The cat sat on the mat by the door.", Settings(top_k=MAX_TOP_K))
    assert {len(t.top) for t in reply.tokens} == {MAX_TOP_K}
    fits = MAX_SHARED_CELLS // (MAX_TOP_K + 1)
    tokens = (reply.tokens * (fits // len(reply.tokens) + 2))[: fits + 1]
    longest, over = replace(reply, tokens=tokens[:fits]), replace(reply, tokens=tokens)
    assert stored(share_text(longest, (), service.identity, NOW)).reply.tokens == longest.tokens
    budget = rf"{len(over.tokens):,} scored tokens with {len(over.tokens) * MAX_TOP_K:,} alternatives, more than the "
    with pytest.raises(BadInput, match=budget + rf"{MAX_SHARED_CELLS:,} \(tokens and alternatives\)"):
        share_text(over, (), service.identity, NOW)
    with pytest.raises(BadInput, match=budget):
        share_reply_json({**over.to_json(), "messages": [{"role": "user", "content": "hi"}]}, service.identity, NOW)
    doc = share_text(longest, (), service.identity, NOW).to_json()
    doc["reply"]["tokens"].append(doc["reply"]["tokens"][0])  # stored by an older greedyscore
    with pytest.raises(BadInput, match=budget):
        SharedItem.from_json(json.loads(json.dumps(doc)))
    # a conversation: every turn's reply is drawn, so two turns that fit alone are too much together
    half = replace(reply, tokens=tokens[: fits // 2 + 1])
    conv = Conversation().ask("a").answer(half).ask("b").answer(half)
    assert share_turn(conv, 0, ORIGINAL, service.identity, NOW).conversation is not None
    with pytest.raises(BadInput, match="shared page shows without making its visitors wait"):
        share_turn(conv, 1, ORIGINAL, service.identity, NOW)
    small = replace(reply, tokens=reply.tokens[:3])
    with pytest.raises(BadInput, match=rf"messages hold {MAX_SHARED_CHARS + 1:,} characters, more than the "):
        share_text(small, (Message("user", "x" * (MAX_SHARED_CHARS + 1)),), service.identity, NOW)
    assert share_text(small, (Message("user", "x" * MAX_SHARED_CHARS),), service.identity, NOW).n_chars == \
        MAX_SHARED_CHARS


def test_a_scored_texts_prompt_is_shown_once(service):
    """Above the text ("Scored as the reply to"), not again in the header."""
    reply = service.score_text("Blue.", Settings(top_k=2), prompt="Name a colour of the sky.")
    item = stored(share_text(reply, (Message("user", "Name a colour of the sky."),), service.identity, NOW))
    head, body, _, _ = shared_view(item, View())
    assert (head + body).count("Name a colour of the sky.") == 1 and "Scored as the reply to" in body
