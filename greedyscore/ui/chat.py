"""The Chat tab: a conversation streamed turn by turn, its numbers, and the fork explorer."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, TypeVar

import gradio as gr

from ..conversation import Conversation
from ..errors import BadInput, GreedyScoreError
from ..examples import CHAT_EXAMPLES
from ..exports import Exports
from ..render import View
from ..render.explore import EXPLORE_JS, conversation_html, fork_outputs, fork_panel_html, live_html
from ..service import Service
from ..session import Session
from ..sharing.document import share_turn
from ..types import Message, Settings, TextDelta
from . import actions
from .parts import DEFAULT_VIEW, NOW, PRIVATE, Controls, Numbers, UIConfig, link_box, shown_as_gr_errors
from .share import Sharing

T = TypeVar("T")


@dataclass
class ChatSession(Session):
    """One visitor's chat, kept in `gr.State` and changed in place: the conversation, plus the turn
    control of `session.Session` (one turn at a time, Stop, Clear's epoch). Every change is applied
    to the current conversation, so selecting a turn meanwhile is never lost."""

    conv: Conversation = field(default_factory=Conversation)

    def reset(self, conv: Conversation | None = None) -> None:
        """Clear, or continue a shared conversation: a turn still running stops and is dropped."""
        self.clear()
        self.conv = Conversation() if conv is None else conv


def _sent(evt: gr.EventData) -> dict[str, Any]:
    """What EXPLORE_JS sent with a click ({action, turn, source, at, token}), read through
    `gr.EventData`'s public attributes (one per key sent)."""
    keys = ("action", "turn", "source", "at", "token")
    try:
        return {key: getattr(evt, key, None) for key in keys}
    except TypeError:  # an event that carried no data
        return dict.fromkeys(keys)


def _checked(get: Callable[[], T]) -> T:
    """Something the page names (a turn, a fork) looked up in this session's conversation."""
    try:
        return get()
    except (IndexError, KeyError, StopIteration) as ex:
        raise BadInput("that reply is no longer in this conversation") from ex


def _source(value: Any) -> tuple[int, int]:
    """"turn:node" from the page -> (turn index, node)."""
    try:
        n, node = (int(x) for x in str(value).split(":"))
    except ValueError as ex:
        raise BadInput("that reply is no longer in this conversation") from ex
    if n < 0 or node < 0:
        raise BadInput("that reply is no longer in this conversation")
    return n, node


class ChatTab:
    """The Chat tab (built by the constructor, handlers as methods)."""

    def __init__(self, service: Service, controls: Controls, exports: Exports, config: UIConfig,
                 sharing: Sharing) -> None:
        self.service, self.exports, self.sharing = service, exports, sharing
        self.can_share = can_share = sharing.store is not None
        self.box = gr.State(ChatSession())
        self.conv = gr.HTML(conversation_html(Conversation(), DEFAULT_VIEW, share=can_share), elem_id="gs-reply",
                            js_on_load=EXPLORE_JS, label="Conversation")
        self.live = gr.HTML("", elem_id="gs-live")
        with gr.Row():
            self.msg = gr.Textbox(placeholder="Ask something…", show_label=False, scale=8, elem_id="gs-msg",
                                  max_lines=8)
            send = gr.Button("Send", variant="primary", scale=1, elem_id="gs-send")
            stop = gr.Button("Stop", variant="stop", scale=1, elem_id="gs-stop")
            clear = gr.Button("Clear", scale=1, elem_id="gs-clear")
        gr.Examples([e.prompt for e in CHAT_EXAMPLES], inputs=[self.msg], label="Examples",
                    example_labels=[e.label for e in CHAT_EXAMPLES])
        gr.Markdown("Click a reply (or Tab to it and press Enter) to chart it; choose an alternative in a token's "
                    "tooltip to see where the other road leads." + (" **Share** under a reply gives a link to it."
                                                                  if can_share else ""), elem_id="gs-hint")
        self.link = link_box()
        self.nums = Numbers("reply", "reply", "tokens and forks (JSON)")
        with gr.Accordion("Explore: the roads not taken", open=True):
            self.forks = gr.HTML(fork_panel_html(Conversation(), DEFAULT_VIEW, "", can_share), elem_id="gs-forks",
                                 js_on_load=EXPLORE_JS)
            self.fork_fig = gr.Plot(elem_id="gs-fork-chart", show_label=False)
        self._wire(send, stop, clear, controls, config)

    def _wire(self, send: gr.Button, stop: gr.Button, clear: gr.Button, controls: Controls, config: UIConfig) -> None:
        box, conv, live, msg, forks = self.box, self.conv, self.live, self.msg, self.forks
        settings, shown = [controls.max_new, controls.top_k, controls.verify], self.outputs[1:]
        for trigger in (send.click, msg.submit):
            trigger(ChatSession.arm, [box], None, **NOW).then(self.turn, [msg, box, *settings, *controls.view],
                                                              [conv, live, msg, *shown], **config.model, **PRIVATE)
        stop.click(ChatSession.stop, [box], None, **NOW)
        clear.click(self.clear, [box], [conv, live, *shown], **NOW)
        for source in (conv, forks):
            source.click(self.explore, [box, *settings, *controls.view], self.outputs, **config.model, **PRIVATE)
            source.click(self.share_path, [box], [self.link], **NOW)
        for comp in controls.view:
            comp.change(self.redraw, [box, *controls.view], [conv, *shown[:3], forks, self.fork_fig], **PRIVATE)

    @property
    def outputs(self) -> list:
        """What `page` fills."""
        return [self.conv, *self.nums.outputs, self.forks, self.fork_fig]

    def conv_html(self, c: Conversation, view: View) -> str:
        return conversation_html(c, view, share=self.can_share)

    def forks_of(self, c: Conversation, view: View, busy: str = "") -> dict:
        return dict(zip((self.forks, self.fork_fig), fork_outputs(c, view, busy, self.can_share)))

    def numbers(self, c: Conversation, view: View) -> dict:
        """Chart, histogram, stats and downloads of the selected turn."""
        turn = c.current
        if turn is None or turn.reply is None:
            return self.nums.show(None, view, (None, None))
        return self.nums.show(turn.reply, view, self.exports.write(turn.reply, turn.to_json()))

    def page(self, c: Conversation, view: View) -> dict:
        return {self.conv: self.conv_html(c, view), **self.numbers(c, view), **self.forks_of(c, view)}

    def turn(self, message: str, s: ChatSession, max_new: float, top_k: float, verify: bool,
             color_by: str, palette: str, threshold: float) -> Iterator[dict]:
        """One turn, streamed below the conversation as plain text, then coloured in place."""
        with shown_as_gr_errors(), s.turn() as cancel:
            view = View.make(color_by, palette, threshold)
            settings = actions.parse_settings(max_new, top_k, verify)
            asked = [*s.conv.messages(), Message("user", message or "")]
            events = actions.stream_turn(self.service, asked, settings, cancel)
            epoch, s.conv = s.epoch, s.conv.ask(message)
            yield {self.conv: self.conv_html(s.conv, view), self.live: live_html(""), self.msg: ""}
            try:
                with closing(events):
                    for event in events:
                        if isinstance(event, TextDelta):  # an empty delta is a heartbeat
                            yield {self.live: live_html(event.text)} if event.delta else gr.skip()
                        elif s.epoch == epoch:  # not cleared meanwhile
                            s.conv = s.conv.answer(event)
                            yield {**self.page(s.conv, view), self.live: "", self.msg: ""}
            except GreedyScoreError:  # put the page back as it was, the message back in its box
                if s.epoch == epoch:
                    s.conv = s.conv.retract()
                yield {self.conv: self.conv_html(s.conv, view), self.live: "", self.msg: message}
                raise

    def explore(self, s: ChatSession, max_new: float, top_k: float, verify: bool, color_by: str, palette: str,
                threshold: float, evt: gr.EventData) -> Iterator[dict]:
        """A click in the conversation or the fork panel: select a turn, show a fork, or fork."""
        with shown_as_gr_errors():
            view, e = View.make(color_by, palette, threshold), _sent(evt)
            if e["action"] == "select":
                s.conv = _checked(lambda: s.conv.select(actions.whole_number("turn", e["turn"])))
                yield {**self.numbers(s.conv, view), **self.forks_of(s.conv, view)}
            elif e["action"] == "show":
                n, node = _source(e["source"])
                s.conv = _checked(lambda: s.conv.show(n, node))
                yield self.forks_of(s.conv, view)
            elif e["action"] == "fork":
                yield from self.fork(s, view, e, actions.parse_settings(max_new, top_k, verify))
            else:  # Share (its own handler): nothing here changes
                yield gr.skip()

    def fork(self, s: ChatSession, view: View, e: dict[str, Any], settings: Settings) -> Iterator[dict]:
        n, node = _source(e["source"])
        with s.turn() as cancel:
            parent = _checked(lambda: s.conv.turns[n].path(node))
            events = actions.stream_fork(self.service, s.conv.messages(n), [t.id for t in parent.tokens], e["at"],
                                         e["token"], settings, cancel)
            epoch, at, token = s.epoch, int(e["at"]), int(e["token"])
            s.conv = s.conv.select(n) if s.conv.selected != n else s.conv
            instead = actions.token_text(self.service, token)
            busy = f"forking at token {at}: {instead!r} instead of {parent.tokens[at].text!r}…"
            yield self.forks_of(s.conv, view, busy)
            try:
                with closing(events):
                    for event in events:
                        if isinstance(event, TextDelta):
                            if event.delta:
                                busy_now = f"{busy} {event.text}"
                                yield {self.forks: fork_panel_html(s.conv, view, busy_now, self.can_share)}
                        elif s.epoch == epoch:  # not cleared meanwhile
                            s.conv = s.conv.add_fork(n, node, at, token, event)
            except GreedyScoreError:
                yield self.forks_of(s.conv, view)
                raise
            yield {**self.numbers(s.conv, view), **self.forks_of(s.conv, view)}

    def redraw(self, s: ChatSession, color_by: str, palette: str, threshold: float) -> dict:
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            reply = s.conv.current.reply if s.conv.current else None
            return {self.conv: self.conv_html(s.conv, view), **self.nums.show(reply, view),
                    **self.forks_of(s.conv, view)}

    def clear(self, s: ChatSession) -> dict:
        s.reset()
        return {self.conv: self.conv_html(s.conv, DEFAULT_VIEW), self.live: "",
                **self.nums.show(None, DEFAULT_VIEW, (None, None)), **self.forks_of(s.conv, DEFAULT_VIEW)}

    def share_path(self, s: ChatSession, request: gr.Request, evt: gr.EventData) -> Any:
        """Share under a reply or a fork: store that path with the conversation before it."""
        e = _sent(evt)
        if e["action"] != "share":
            return gr.skip()
        with shown_as_gr_errors():
            n, node = _source(e["source"])
            item = share_turn(s.conv, n, node, actions.identity(self.service), time.time())
            return {self.link: self.sharing.link(item, request)}

