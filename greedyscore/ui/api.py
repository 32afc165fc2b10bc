"""Named endpoints for gradio_client: /chat, /score_text, /fork, /calibration, /compare, /step,
/distribution, /share, /shared. Plain inputs, so out-of-range values reach our own validation and its messages; every
parameter after the first has a default. The model work is the tabs' own (`actions`)."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import gradio as gr

from ..errors import BadInput
from ..render import View, render_outputs
from ..render.calibration import calibration_html, reliability_figure
from ..render.compare import compare_outputs
from ..render.steer import distribution_html
from ..service import Service, last
from ..sharing.document import share_reply_json
from ..types import Message, ScoredReply, Settings, Stepped
from ..variants import Variants
from . import actions
from .parts import DEFAULT_VIEW, UIConfig, shown_as_gr_errors
from .share import Sharing

REPLY = (gr.HTML, gr.Plot, gr.JSON, gr.HTML)  # token HTML, figure, tokens JSON, stats HTML
OUTPUTS = {"chat": REPLY, "score_text": REPLY, "fork": REPLY, "calibration": (gr.JSON, gr.Plot, gr.HTML),
           "compare": (gr.HTML, gr.Plot, gr.JSON), "step": REPLY, "distribution": (gr.JSON,), "share": (gr.JSON,),
           "shared": REPLY}  # in registration order
INPUTS = {"str": gr.Textbox, "float": gr.Number, "bool": gr.Checkbox, "Any": gr.JSON}  # by annotation
DEFAULTS = Settings()  # what an API call gets for every parameter it leaves out
COLOR_BY, PALETTE, THRESHOLD = DEFAULT_VIEW.color_by, DEFAULT_VIEW.palette, DEFAULT_VIEW.threshold


def hidden_inputs(handler: Callable) -> list[gr.components.Component]:
    """One per parameter (gr.Request aside): its kind from the annotation, its value (the client's
    default) from the default, where () stands for an empty JSON list."""
    inputs = []
    for p in inspect.signature(handler).parameters.values():
        if p.annotation != "gr.Request":
            default = {} if p.default is p.empty else {"value": [] if p.default == () else p.default}
            inputs.append(INPUTS[p.annotation](label=p.name, **default))
    return inputs


def reply_outputs(reply: ScoredReply, view: View, kind: str, messages: list[Message],
                  settings: Settings) -> tuple[str, Any, dict, str]:
    """-> (token HTML, figure, tokens JSON, stats HTML); the JSON says how the reply was made
    ("kind", "messages", "settings"), so /share stores it whole."""
    page, fig, _, stats = render_outputs(reply, view)
    made = {"kind": kind, "messages": [{"role": m.role, "content": m.content} for m in messages],
            "settings": asdict(settings)}
    return page, fig, {**reply.to_json(), **made}, stats


class Api:
    """The endpoints, each on hidden components made from its handler's parameters (type from the
    annotation, the client's default from the default); a handler returns its outputs in order.
    Gradio names every event after its function, private ones too, first come first named: no tab
    handler may share a name with an endpoint."""

    def __init__(self, service: Service, config: UIConfig, variants: Variants, sharing: Sharing) -> None:
        self.service, self.variants, self.sharing = service, variants, sharing
        cheap = dict(concurrency_limit=None)  # store work, no model: every request at once (the store locks)
        with gr.Row(visible=False):
            for name, outputs in OUTPUTS.items():
                handler = getattr(self, name)
                gr.Button().click(handler, hidden_inputs(handler), [kind() for kind in outputs], api_name=name,
                                  **(cheap if name in ("share", "shared") else config.model))

    def chat(self, message: str, history: Any = (), max_new_tokens: float = DEFAULTS.max_new_tokens,
             top_k: float = DEFAULTS.top_k, verify: bool = DEFAULTS.verify, color_by: str = COLOR_BY,
             palette: str = PALETTE, threshold: float = THRESHOLD) -> tuple:
        """One turn, not streamed -> (token HTML, figure, tokens JSON, stats HTML)."""
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            settings = actions.parse_settings(max_new_tokens, top_k, verify)
            msgs = [*(actions.parse_messages(history) if history else []), Message("user", message or "")]
            return reply_outputs(actions.chat(self.service, msgs, settings), view, "chat", msgs, settings)

    def score_text(self, text: str, prompt: str = "", top_k: float = DEFAULTS.top_k, color_by: str = COLOR_BY,
                   palette: str = PALETTE, threshold: float = THRESHOLD) -> tuple:
        """Teacher-forced scoring of text -> (token HTML, figure, tokens JSON, stats HTML)."""
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            reply, after = actions.score(self.service, text, prompt, top_k)
            return reply_outputs(reply, view, "text", list(after), actions.parse_settings(1, top_k))

    def calibration(self, text: str, prompt: str = "", top_k: float = DEFAULTS.top_k) -> tuple:
        """Top-1 calibration of the model on known text -> (calibration JSON {"bins": [{"lo", "hi", "n",
        "confidence", "accuracy"}], "ece", "brier", "n", "accuracy"}, reliability figure, summary HTML)."""
        with shown_as_gr_errors():
            cal = actions.score(self.service, text, prompt, top_k)[0].calibration
            return cal.to_json(), reliability_figure(cal), calibration_html(cal)

    def compare(self, text: str, prompt: str = "", against: str = "bfloat16", system_a: str = "",
                system_b: str = "", top_k: float = DEFAULTS.top_k, conversation_b: Any = None) -> tuple:
        """The text scored under A (this model, system prompt A) and B (against: "another system prompt",
        "another conversation" (conversation_b: the messages the text replies to), "bfloat16", "int8", or
        "another model" with --compare-model), aligned on characters ->
        (side-by-side HTML, figure, comparison JSON {"spans": [{"text", "logprob_a", "logprob_b", "delta",
        "points", ...}], "same_tokens", and with one tokenizer "steps": [{"kl", "overlap", "greedy_differs",
        "argmax_a", "argmax_b"}], "mean_kl", ...})."""
        with shown_as_gr_errors():
            messages_b = actions.parse_messages(conversation_b) if conversation_b else ()
            return compare_outputs(actions.compare(self.variants, text, prompt, against, system_a, system_b, top_k,
                                                   messages_b))

    def fork(self, messages: Any, reply_token_ids: Any, at: float, token_id: float,
             max_new_tokens: float = DEFAULTS.max_new_tokens, top_k: float = DEFAULTS.top_k,
             verify: bool = DEFAULTS.verify, color_by: str = COLOR_BY, palette: str = PALETTE,
             threshold: float = THRESHOLD) -> tuple:
        """The reply had the model taken token_id at position at -> the same four outputs as /chat
        (tokens JSON: "forked_at", and "shared" on the prefix). Empty reply ids: a fresh greedy reply."""
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            settings = actions.parse_settings(max_new_tokens, top_k, verify)
            msgs = actions.parse_messages(messages)
            reply = actions.fork(self.service, msgs, reply_token_ids, at, token_id, settings)
            return reply_outputs(reply, view, "chat", msgs, settings)

    def step(self, messages: Any, prefix: Any = (), chosen: Any = (), token_id: Any = None, text: str = "",
             temperature: float = 1.0, sampler_top_k: float = 0, top_p: float = 1.0, finish: bool = False,
             max_new_tokens: float = DEFAULTS.max_new_tokens, top_k: float = DEFAULTS.top_k,
             color_by: str = COLOR_BY, palette: str = PALETTE, threshold: float = THRESHOLD) -> tuple:
        """One step of a reply built by hand: after the prompt and `prefix` (the reply's ids so far;
        `chosen`: the positions picked by hand), take token_id or the tokens of `text` (or neither), then
        -> (path HTML, figure, {"path": tokens JSON (a "chosen" flag per token), "next": the next-token
        distribution as /distribution gives it, null once the path ended}, distribution HTML).
        finish: greedy from the end of the path instead; "next" is then null."""
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            settings = actions.parse_settings(max_new_tokens, top_k)
            sampler = actions.parse_sampler(temperature, sampler_top_k, top_p)
            msgs = actions.parse_messages(messages)
            if finish:
                stepped = Stepped(last(actions.finish_path(self.service, msgs, prefix, chosen, settings)), None)
            else:
                stepped = actions.step(self.service, msgs, prefix, chosen, sampler, settings, token_id, text)
            page, fig, tokens, _ = reply_outputs(stepped.path, view, "chat", msgs, settings)
            ended = stepped.next is None
            return page, fig, {"path": tokens, "next": None if ended else stepped.next.to_json()}, \
                distribution_html(stepped.next, ended)

    def distribution(self, messages: Any, prefix: Any = (), temperature: float = 1.0, top_k: float = 0,
                     top_p: float = 1.0) -> dict:
        """The next-token distribution after the prompt and `prefix` ([] = right after the prompt) ->
        {"top": [{"id", "text", "raw", "sampled"}, ... 20 by raw probability], "rest": {"raw", "sampled"},
        "entropy", "p_greedy"}: raw, and through a sampler (temperature (0 = greedy) -> top_k (0 = off)
        -> top_p (1 = off), renormalised after each)."""
        with shown_as_gr_errors():
            sampler = actions.parse_sampler(temperature, top_k, top_p)
            stepped = actions.step(self.service, actions.parse_messages(messages), prefix, (), sampler,
                                   Settings(max_new_tokens=1))
            if stepped.next is None:
                raise BadInput("the prefix ends on an end-of-turn token: nothing follows it")
            return stepped.next.to_json()

    def share(self, tokens: Any, request: gr.Request) -> dict:
        """Store a result: the tokens JSON that /chat, /fork or /score_text returned -> {"id", "url"}
        (open the url in a browser, or pass the id to /shared)."""
        with shown_as_gr_errors():
            item = share_reply_json(tokens, actions.identity(self.service), time.time())
            item_id, url = self.sharing.put(item, request)
            return {"id": item_id, "url": url}

    def shared(self, item_id: str, color_by: str = COLOR_BY, palette: str = PALETTE,
               threshold: float = THRESHOLD) -> tuple:
        """A shared result by id -> the same four outputs as /chat (tokens JSON: the whole stored
        document: "kind", "messages", "settings", "model" identity, "created", and the reply or the
        conversation)."""
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            item, _ = self.sharing.view(item_id, view)
            page, fig, _, stats = render_outputs(item.reply, view)
            return page, fig, item.to_json(), stats

