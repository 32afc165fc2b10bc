"""The Gradio app. Each tab is a class whose constructor lays it out and wires it and whose
methods are its event handlers, each -> {component: value} (no hand-counted tuples). Every model
call goes through `actions`, shared by the tabs and the API endpoints; HTML and figures come from
`render`. What a visitor owns lives in per-session `gr.State`; the Service is the one shared object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..errors import BadInput
from ..exports import EXPORT_TTL_S, Exports
from ..render import CSS, View
from ..render.map import MAP_HEAD
from ..render.steer import STEER_CSS
from ..render.text import neutral
from ..service import Service
from ..sharing.document import SharedItem
from ..variants import Variants
from . import actions
from .api import Api
from .chat import ChatSession, ChatTab, _checked, _source
from .parts import PRIVATE, Controls, UIConfig, shown_as_gr_errors
from .share import SharedPanel, Sharing
from .steer import StepTab
from .texts import CompareTab, GuessTab, ScoreTab

__all__ = ["ChatSession", "Sharing", "UIConfig", "_checked", "_source", "build_demo", "launch"]


def build_demo(service: Service, config: UIConfig = UIConfig(), exports: Exports | None = None,
               variants: Variants | None = None, sharing: Sharing | None = None) -> gr.Blocks:
    """The whole app: a shared result (opened by /?r=ID), Chat, Score-text, Guess, Step and Compare
    tabs, plus API endpoints /chat, /score_text, /fork, /step, /distribution, /calibration, /compare,
    /share, /shared.
    sharing: where Share stores results (None: sharing off)."""
    exports = exports or Exports()
    variants = variants or Variants(service)
    sharing = sharing or Sharing(None, service)
    blocks = dict(title="greedyscore: what the model was sure of", fill_width=True,
                  delete_cache=(int(EXPORT_TTL_S), int(EXPORT_TTL_S)))  # gradio's copies of the exports too
    with gr.Blocks(**blocks) as demo:
        gr.Markdown(header(service), elem_id="gs-header")
        panel = SharedPanel(sharing)
        controls = Controls(config)
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat"):
                chat = ChatTab(service, controls, exports, config, sharing)
            with gr.Tab("Score text", id="score"):
                score = ScoreTab(service, controls, exports, config, sharing)
            with gr.Tab("Guess the next token", id="guess"):
                GuessTab(service, config)
            with gr.Tab("Step", id="step"):
                StepTab(service, controls, config, chat.box, sharing, exports)
            with gr.Tab("Compare", id="compare"):
                CompareTab(variants, config)
        panel.wire(demo, controls.view, config)
        panel.proceed.click(Continue(tabs, chat, score).proceed, [panel.item, chat.box, *controls.view],
                            [tabs, *chat.outputs, score.text, score.prompt, *score.drawn, score.reply, score.after],
                            **PRIVATE)
        Api(service, config, variants, sharing)
    return demo


def header(service: Service) -> str:
    name, backend, source, drift = actions.about(service)
    return ("# greedyscore\nEvery token of a greedy reply with its "
            + (f"**true model probability** ({source})" if drift is None else
               f"**model probability** ({source})")
            + ". Hover or focus a token for its alternatives.\n\n"
            f"**Model:** `{neutral(name)}` · **backend:** `{neutral(backend)}` · greedy decoding"
            + ("" if drift is None else f" · **{drift.note()}**"))


@dataclass(frozen=True, eq=False)
class Continue:
    """"Continue this conversation": the shared chat becomes the visitor's own (forks and all); a
    shared text opens in Score text."""

    tabs: gr.Tabs
    chat: ChatTab
    score: ScoreTab

    def proceed(self, item: SharedItem | None, s: ChatSession, color_by: str, palette: str,
                 threshold: float) -> dict:
        with shown_as_gr_errors():
            if item is None:
                raise BadInput("open a share link first")
            view = View.make(color_by, palette, threshold)
            if item.kind != "chat":
                return {self.tabs: gr.Tabs(selected="score"), **self.score.open(item, view)}
            if item.context:
                raise BadInput("this reply came with earlier messages (a system prompt or history sent through the "
                               "API) that a chat here cannot hold: use Re-run, or the API with those messages")
            s.reset(item.conversation)
            return {self.tabs: gr.Tabs(selected="chat"), **self.chat.page(s.conv, view)}


def launch(demo: gr.Blocks, trusted_proxies: str = "", **kwargs: Any) -> None:
    """`demo.launch(**kwargs)` with what it needs besides: the CSS and the long replies' map script
    (launch arguments in Gradio 6) and which proxies may name the client. uvicorn rewrites the
    client address from X-Forwarded-For for the addresses in FORWARDED_ALLOW_IPS (read when Gradio builds its server),
    loopback unless set: any local user or proxy could then claim any address and step around the
    share rate limit. Only `trusted_proxies` (default: none) is trusted."""
    os.environ["FORWARDED_ALLOW_IPS"] = trusted_proxies
    demo.launch(css=CSS + STEER_CSS, head=MAP_HEAD, **kwargs)
