"""The conversation model and its rendering (pure: a scripted engine makes the replies)."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from scripted_engine import ScriptedEngine, ids_of

from greedyscore.conversation import ORIGINAL, Conversation
from greedyscore.render import View
from greedyscore.render.explore import conversation_html, fork_outputs, fork_panel_html, live_html
from greedyscore.service import Service
from greedyscore.types import Message, Settings

HOSTILE = '<img src=x onerror="alert(1)"> & "q"'


@pytest.fixture(scope="module")
def service():
    return Service(ScriptedEngine({"hi": "Hello there!", HOSTILE: "ok", "again": "Yes."}))


def start_tags(markup: str) -> list[tuple[str, dict]]:
    tags: list[tuple[str, dict]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append((tag, dict(attrs)))

    Collect().feed(markup)
    return tags


def test_messages_follow_the_turns_and_skip_unanswered_ones(service):
    c = Conversation().ask("hi")
    assert c.messages() == []  # a turn still running is not history yet
    c = c.answer(service.chat([Message("user", "hi")], Settings(max_new_tokens=50)))
    assert c.selected == 0 and c.messages() == [Message("user", "hi"), Message("assistant", "Hello there!")]
    c2 = c.ask("never answered").ask("again")
    assert c2.messages(2) == [Message("user", "hi"), Message("assistant", "Hello there!"), Message("user", "again")]


def test_fork_tree_reuses_a_fork_and_exports(service):
    msgs = [Message("user", "hi")]
    reply = service.chat(msgs, Settings(max_new_tokens=50))
    c = Conversation().ask("hi").answer(reply)
    ids = [t.id for t in reply.tokens]
    one = service.fork(msgs, ids, 2, ids_of("y")[0], Settings(max_new_tokens=8))
    c = c.add_fork(0, ORIGINAL, 2, ids_of("y")[0], one)
    assert c.shown == 1 and c.turns[0].path(1) is one
    assert [t.id for t in one.tokens] == [*ids[:2], ids_of("y")[0], ids[-1]]  # the script then ends the turn
    two = service.fork(msgs, [t.id for t in one.tokens], 3, ids_of("z")[0], Settings(max_new_tokens=8))
    c = c.add_fork(0, 1, 3, ids_of("z")[0], two)  # a fork of the fork
    assert c.shown == 2 and [f.parent for f in c.turns[0].forks] == [ORIGINAL, 1]
    again = c.add_fork(0, ORIGINAL, 2, ids_of("y")[0], one)
    assert len(again.turns[0].forks) == 2 and again.shown == 1  # the same choice: the same fork
    data = c.turns[0].to_json()
    assert data["text"] == "Hello there!" and [f["parent"] for f in data["forks"]] == [0, 1]
    assert data["forks"][1]["forked_at"] == 3 and data["forks"][1]["tokens"][2]["shared"]
    html, fig = fork_outputs(c, View())
    assert "fork 2" in html and "fork 1" in html and len(fig.data) == 2
    assert [s.x0 for s in fig.layout.shapes if s.name == "forked"] == [3]


def test_conversation_html_escapes_and_marks_turns(service):
    c = Conversation().ask(HOSTILE).answer(service.chat([Message("user", HOSTILE)], Settings(max_new_tokens=20)))
    out = conversation_html(c, View())
    tags = start_tags(out)
    assert not [t for t, _ in tags if t in ("img", "script")]
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in out
    turns = [a for t, a in tags if "data-turn" in a]
    assert len(turns) == 1 and "gs-selected" in turns[0]["class"] and turns[0]["data-source"] == "0:0"
    assert any(t == "button" and "gs-fork" in a.get("class", "") for t, a in tags)  # alternatives fork
    assert "gs-legend" in out
    assert not [t for t, _ in start_tags(live_html(HOSTILE)) if t == "img"]


def test_fork_panel_lists_the_closest_calls(service):
    reply = service.chat([Message("user", "hi")], Settings(max_new_tokens=50, top_k=3))
    c = Conversation().ask("hi").answer(reply)
    html = fork_panel_html(c, View())
    points = [a for t, a in start_tags(html) if t == "button" and "gs-point" in a.get("class", "")]
    assert len(points) == 3 and all(int(a["data-at"]) < len(reply.tokens) for a in points)
    assert "compute this road" in html
    assert "choose an alternative" in fork_panel_html(Conversation(), View())


def test_chat_session_stop_reaches_a_turn_still_waiting_and_turns_run_one_at_a_time(service):
    """Send arms the turn's cancel event before the turn is queued, so Stop works while it waits;
    a visitor's second turn or fork is refused while one runs, with a message."""
    from greedyscore.errors import BadInput
    from greedyscore.ui import ChatSession

    s = ChatSession()
    s.arm()
    s.stop()  # pressed while the turn waits in Gradio's queue
    with s.turn() as cancel:
        assert cancel.is_set()
        reply = service.chat([Message("user", "hi")], Settings(max_new_tokens=50), cancel=cancel)
        assert reply.finish_reason == "abort" and reply.tokens == ()  # no model time spent
        with pytest.raises(BadInput, match="still being generated"), s.turn():
            pass
    assert s.cancel is None
    with s.turn() as cancel:  # the next turn gets a fresh event
        assert not cancel.is_set()


def test_page_references_are_checked():
    from greedyscore.errors import BadInput
    from greedyscore.ui import _checked, _source

    assert _source("2:1") == (2, 1)
    for bad in ("-1:0", "x", None, "1:2:3", "0:-4"):
        with pytest.raises(BadInput, match="no longer in this conversation"):
            _source(bad)
    with pytest.raises(BadInput, match="no longer in this conversation"):
        _checked(lambda: Conversation().select(0))
    with pytest.raises(BadInput, match="no longer in this conversation"):
        _checked(lambda: Conversation().ask("hi").turns[0].path(3))
