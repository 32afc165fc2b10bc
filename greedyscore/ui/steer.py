"""The Step tab: a reply built token by token by the visitor (greedy, a listed token, any typed
text), the next-token distribution raw and through a sampler, then "finish greedily from here"."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import Any

import gradio as gr

from ..errors import BadInput
from ..exports import Exports
from ..render import View
from ..render.explore import live_html
from ..render.steer import STEER_JS, distribution_html, lens_html, path_html
from ..service import Service
from ..session import Session
from ..sharing.document import share_reply
from ..types import Message, Sampler, Settings, Stepped, TextDelta
from . import actions
from .parts import DEFAULT_VIEW, NOW, PRIVATE, Controls, Numbers, UIConfig, link_box, shown_as_gr_errors
from .share import Sharing

STEP_EXAMPLE = "Write one sentence about the sea."


@dataclass
class StepSession(Session):
    """One visitor's path, kept in `gr.State`: the messages it answers, each step so far (Undo pops)."""

    messages: tuple[Message, ...] = ()
    steps: list[Stepped] = field(default_factory=list)
    along: bool = False  # the sampler's lens along the path, and in every token's tooltip

    def show_along(self, on: bool) -> None:
        self.along = bool(on)

    def push(self, stepped: Stepped) -> None:
        """A new step; the one before it lets go of its logits row (Undo back to it steps again)."""
        if self.steps:
            self.steps[-1] = replace(self.steps[-1], logits=None)
        self.steps.append(stepped)

    @property
    def now(self) -> Stepped | None:
        return self.steps[-1] if self.steps else None

    def ids(self) -> tuple[list[int], list[int]]:
        """The path's ids and the positions the visitor chose."""
        if self.now is None:
            raise BadInput("start from a message first")
        return [t.id for t in self.now.path.tokens], list(self.now.path.chosen)


def _sent(evt: gr.EventData) -> tuple[str | None, Any, Any]:
    """What STEER_JS sent with a click: (action, token, at)."""
    try:
        return getattr(evt, "action", None), getattr(evt, "token", None), getattr(evt, "at", None)
    except TypeError:  # an event that carried no data
        return None, None, None


class StepTab:
    """The Step tab (built by the constructor, handlers as methods)."""

    def __init__(self, service: Service, controls: Controls, config: UIConfig, chat: gr.State,
                 sharing: Sharing, exports: Exports) -> None:
        self.service, self.sharing, self.exports = service, sharing, exports
        gr.Markdown("Build a reply yourself: after the prompt, see the model's next-token distribution (raw, and "
                    "through a sampler), then take the greedy token, click any listed one, or type any text; "
                    "step again, or finish greedily. Your picks are outlined; every token keeps its true "
                    "probability.")
        with gr.Row():
            self.system = gr.Textbox(label="system prompt (optional)", scale=2, elem_id="gs-step-system")
            self.msg = gr.Textbox(STEP_EXAMPLE, label="message", scale=4, elem_id="gs-step-msg")
            start = gr.Button("Start", variant="primary", scale=1, elem_id="gs-step-start")
        with gr.Row():
            from_chat = gr.Button("…or step through the Chat tab's selected reply", scale=3,
                                  elem_id="gs-step-from-chat")
            self.at = gr.Number(0, label="from its token (0 = its start)", precision=0, scale=1, minimum=0,
                                elem_id="gs-step-at")
        with gr.Row():
            self.temperature = gr.Slider(0, 2, value=1.0, step=0.05, label="temperature (0 = greedy)",
                                         elem_id="gs-step-temp")
            self.sampler_k = gr.Slider(0, 100, value=0, step=1, label="sampler top-k (0 = off)", elem_id="gs-step-topk")
            self.top_p = gr.Slider(0.01, 1, value=1.0, step=0.01, label="top-p (1 = off)", elem_id="gs-step-topp")
        self.along = gr.Checkbox(False, label="also along the path: how likely this sampler was to keep each greedy "
                                 "token (in every token's tooltip, and for the whole path)", elem_id="gs-step-along")
        self.dist = gr.HTML(distribution_html(None), elem_id="gs-step-dist", js_on_load=STEER_JS)
        with gr.Row():
            greedy = gr.Button("Take the greedy token", elem_id="gs-step-greedy", scale=1)
            self.text = gr.Textbox(placeholder="…or type any text to continue with", show_label=False, scale=3,
                                   elem_id="gs-step-text")
            force = gr.Button("Use this text", elem_id="gs-step-force", scale=1)
            undo = gr.Button("Undo", elem_id="gs-step-undo", scale=0)
            finish = gr.Button("Finish greedily from here", variant="primary", elem_id="gs-step-finish", scale=1)
        self.path = gr.HTML(path_html(None, DEFAULT_VIEW), elem_id="gs-step-path", js_on_load=STEER_JS)
        with gr.Row():
            share = gr.Button("Share this path", elem_id="gs-step-share", size="sm", scale=0,
                              visible=sharing.store is not None)
            self.link = link_box()
        self.lens = gr.HTML("", elem_id="gs-step-lens")
        self.nums = Numbers("path", "step")
        self.box = gr.State(StepSession())
        # every handler's inputs after its own (the session, the sampler, the settings, the view), and outputs
        self.common = [self.box, self.temperature, self.sampler_k, self.top_p, controls.max_new, controls.top_k,
                       *controls.view]
        self.outs = [self.dist, self.path, self.lens, self.text, *self.nums.outputs]
        self._wire(start, greedy, force, undo, finish, controls, config)
        from_chat.click(self.from_chat, [chat, self.at, *self.common], self.outs, **config.model, **PRIVATE)
        share.click(self.share_stepped, [self.box, controls.max_new, controls.top_k], [self.link], queue=False,
                    **PRIVATE)

    def _wire(self, start: gr.Button, greedy: gr.Button, force: gr.Button, undo: gr.Button, finish: gr.Button,
              controls: Controls, config: UIConfig) -> None:
        sampler, common, outs = [self.temperature, self.sampler_k, self.top_p], self.common, self.outs
        model = dict(**config.model, **PRIVATE)
        for trigger in (start.click, self.msg.submit):
            trigger(self.start, [self.system, self.msg, *common], outs, **model)
        greedy.click(self.greedy, common, outs, **model)
        for trigger in (force.click, self.text.submit):
            trigger(self.force, [self.text, *common], outs, **model)
        for source in (self.dist, self.path):
            source.click(self.clicked, common, outs, **model)
        undo.click(self.undo, common, outs, **NOW)
        for comp in sampler:
            comp.change(self.again, common, outs, trigger_mode="always_last", **model)
        finish.click(Session.arm, [self.box], None, **NOW).then(self.finish, common, outs, **model)
        for comp in controls.view:
            comp.change(self.redraw, common, outs, **PRIVATE)
        self.along.change(StepSession.show_along, [self.box, self.along], None, **NOW).then(
            self.redraw, common, outs, **model)

    # --- what the page shows -----------------------------------------------------------------
    def shown(self, s: StepSession, sampler: Sampler, view: View) -> dict:
        """The distribution (none once the path has ended), the path, the sampler's lens along it, the numbers."""
        now = s.now
        path = now.path if now else None
        dist = distribution_html(now.next if now else None, ended=bool(now and now.next is None))
        lens, p_greedy = "", []
        if s.along and path is not None and path.tokens:
            p_greedy, from_top = actions.lens(self.service, Stepped(path, None), sampler)
            how = ("from the kept alternatives" if from_top else
                   "recomputed from whole rows: the kept alternatives cannot represent this sampler's cut")
            lens = lens_html(p_greedy) + f'<p class="gs-step-key">({how})</p>'
        return {self.dist: dist, self.path: path_html(path, view, p_greedy, sampler), self.lens: lens, self.text: "",
                **self.nums.show(path, view, self.exports.write(path, path.to_json()) if path else (None, None))}

    def _step(self, s: StepSession, sampler: Sampler, settings: Settings, view: View, prefix: Any, chosen: Any,
              **force: Any) -> dict:
        s.push(actions.step(self.service, s.messages, prefix, chosen, sampler, settings, **force))
        return self.shown(s, sampler, view)

    # --- handlers -----------------------------------------------------------------------------
    def start(self, system: str, message: str, s: StepSession, *values: Any) -> dict:
        with shown_as_gr_errors():
            sampler, settings, view = _values(*values)
            messages = ([Message("system", system)] if (system or "").strip() else []) + [Message("user", message)]
            first = actions.step(self.service, messages, (), (), sampler, settings)  # fails before anything is dropped
            s.messages, s.steps = tuple(messages), [first]
            return self.shown(s, sampler, view)

    def from_chat(self, chat: Any, at: float, s: StepSession, *values: Any) -> dict:
        """The Chat tab's selected reply (or the fork shown beside it), from its token `at` on."""
        with shown_as_gr_errors():
            sampler, settings, view = _values(*values)
            conv = chat.conv
            if conv.current is None:
                raise BadInput("ask something in the Chat tab first, and select its reply")
            reply = conv.current.path(conv.shown)
            at = actions.whole_number("the token to start from", at or 0)
            if not 0 <= at <= len(reply.tokens):
                raise BadInput(f"that reply has {len(reply.tokens)} tokens: start from 0 to {len(reply.tokens)}")
            chosen = [reply.forked_at] if reply.forked_at is not None and reply.forked_at < at else []
            messages = conv.messages(conv.selected)
            stepped = actions.step(self.service, messages, [t.id for t in reply.tokens[:at]], chosen, sampler,
                                   settings)
            s.messages, s.steps = tuple(messages), [stepped]
            return self.shown(s, sampler, view)

    def greedy(self, s: StepSession, *values: Any) -> dict:
        with shown_as_gr_errors():
            sampler, settings, view = _values(*values)
            ids, chosen = s.ids()
            if s.now.next is None:
                raise BadInput("the path has ended: Undo, or start again")
            return self._step(s, sampler, settings, view, [*ids, s.now.next.greedy_id], chosen)

    def force(self, text: str, s: StepSession, *values: Any) -> dict:
        with shown_as_gr_errors():
            sampler, settings, view = _values(*values)
            ids, chosen = s.ids()
            return self._step(s, sampler, settings, view, ids, chosen, force_text=text)

    def clicked(self, s: StepSession, temperature: float, sampler_k: float, top_p: float, max_new: float,
                top_k: float, color_by: str, palette: str, threshold: float, evt: gr.EventData) -> dict:
        """A listed token taken (greedy's is not marked as a pick), or an alternative in the path's
        tooltips: the path restarts there with it."""
        action, token, at = _sent(evt)
        if action not in ("take", "fork"):
            return gr.skip()
        with shown_as_gr_errors():
            sampler, settings, view = _values(temperature, sampler_k, top_p, max_new, top_k, color_by, palette,
                                              threshold)
            ids, chosen = s.ids()
            if action == "fork":
                at = actions.whole_number("at", at)
                ids, chosen = ids[: max(0, at)], [c for c in chosen if c < at]
            elif s.now.next is not None and token == s.now.next.greedy_id:
                return self._step(s, sampler, settings, view, [*ids, token], chosen)
            return self._step(s, sampler, settings, view, ids, chosen, force_id=token)

    def again(self, s: StepSession, *values: Any) -> dict:
        """The sampler changed: the same path, looked at again (through its kept row, else one more pass)."""
        with shown_as_gr_errors():
            sampler, settings, view = _values(*values)
            if s.now is None:
                return gr.skip()
            if s.now.logits is not None:
                s.steps[-1] = actions.relook(self.service, s.now, sampler)
                return self.shown(s, sampler, view)
            ids, chosen = s.ids()
            s.steps.pop()
            return self._step(s, sampler, settings, view, ids, chosen)

    def undo(self, s: StepSession, *values: Any) -> dict:
        with shown_as_gr_errors():
            sampler, _, view = _values(*values)
            if len(s.steps) > 1:
                s.steps.pop()
            return self.shown(s, sampler, view)

    def finish(self, s: StepSession, *values: Any) -> Iterator[dict]:
        """Greedy from the end of the path, streamed into the distribution's place."""
        with shown_as_gr_errors(), s.turn() as cancel:
            sampler, settings, view = _values(*values)
            ids, chosen = s.ids()
            events = actions.finish_path(self.service, s.messages, ids, chosen, settings, cancel)
            with closing(events):
                for event in events:
                    if isinstance(event, TextDelta):
                        yield {self.dist: live_html(event.text)} if event.delta else gr.skip()
                    else:
                        s.push(Stepped(event, None))
                        yield self.shown(s, sampler, view)

    def share_stepped(self, s: StepSession, max_new: float, top_k: float, request: gr.Request) -> dict:
        """A link to the path (paused or finished), picks and all."""
        with shown_as_gr_errors():
            if s.now is None or not s.now.path.tokens:
                raise BadInput("build a path first: take a token or two")
            item = share_reply("chat", s.now.path, s.messages, actions.parse_settings(max_new, top_k),
                               actions.identity(self.service), time.time())
            return {self.link: self.sharing.link(item, request)}

    def redraw(self, s: StepSession, *values: Any) -> dict:
        with shown_as_gr_errors():
            sampler, _, view = _values(*values)
            return self.shown(s, sampler, view)


def _values(temperature: float, sampler_k: float, top_p: float, max_new: float, top_k: float, color_by: str,
            palette: str, threshold: float) -> tuple[Sampler, Settings, View]:
    return (actions.parse_sampler(temperature, sampler_k, top_p), actions.parse_settings(max_new, top_k),
            View.make(color_by, palette, threshold))
