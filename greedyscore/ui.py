"""The Gradio app: layout and event wiring only.

Model work goes through `Service` (a chat turn is `Service.stream`, a fork `Service.stream_fork`);
HTML and figures come from `render`; download files from `Exports`. Everything a visitor owns
(the `Conversation` with its fork trees, the running turn's cancel event) lives in per-session
`gr.State`; the Service is the one shared object.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import gradio as gr

from .conversation import Conversation
from .errors import BadInput, GreedyScoreError
from .examples import CALIBRATION_SAMPLE, CHAT_EXAMPLES, SCORE_EXAMPLES
from .exports import EXPORT_TTL_S, Exports
from .render import COLOR_MODES, CSS, DEFAULT_PALETTE, PALETTES, View, legend_html, render_numbers, render_outputs
from .render.calibration import calibration_html, reliability_figure
from .render.compare import compare_outputs
from .render.explore import EXPLORE_JS, conversation_html, fork_outputs, fork_panel_html, live_html
from .render.share_page import share_link_html
from .render.text import neutral
from .requests import parse_messages, parse_messages_json, parse_settings, whole_number
from .service import Service
from .sharing.document import share_reply_json, share_text, share_turn
from .types import MAX_TOP_K, Message, ScoredReply, Settings, TextDelta
from .ui_share import Sharing, link_box, shared_panel, wire_panel
from .ui_teach import compare_tab, guess_tab
from .variants import Variants, compare_text

T = TypeVar("T")
MODEL_EVENTS = "model"  # one concurrency group shared by every event that runs the model
DEFAULT_VIEW = View()
API_DEFAULTS = Settings()  # what an API call gets for every parameter it leaves out


@dataclass(frozen=True)
class UIConfig:
    max_new_tokens: int = 128  # default of the slider
    max_new_tokens_cap: int = 1024  # the slider's top
    concurrency: int = 1  # model events running at once (the Service batches them)


@dataclass(frozen=True)
class Controls:
    """The shared settings panel: generation settings, then how replies are drawn."""

    max_new: gr.Slider
    top_k: gr.Slider
    verify: gr.Checkbox
    color_by: gr.Radio
    palette: gr.Radio
    threshold: gr.Slider

    @property
    def view(self) -> list[gr.components.Component]:
        return [self.color_by, self.palette, self.threshold]


@contextmanager
def shown_as_gr_errors() -> Iterator[None]:
    """Domain errors (bad input, busy, model failure) reach the visitor as their message."""
    try:
        yield
    except GreedyScoreError as ex:
        raise gr.Error(str(ex)) from ex


# --- layout ------------------------------------------------------------------------------------
def build_demo(service: Service, config: UIConfig = UIConfig(), exports: Exports | None = None,
               variants: Variants | None = None, sharing: Sharing | None = None) -> gr.Blocks:
    """The whole app: a shared result (opened by /?r=ID), Chat, Score-text, Guess and Compare
    tabs, plus API endpoints /chat, /score_text, /fork, /calibration, /compare, /share, /shared.
    sharing: where Share stores results (None: sharing off)."""
    exports = exports or Exports()
    variants = variants or Variants(service)
    sharing = sharing or Sharing(None, service)
    model = dict(concurrency_id=MODEL_EVENTS, concurrency_limit=config.concurrency)
    blocks = dict(title="greedyscore: what the model was sure of", fill_width=True,
                  delete_cache=(int(EXPORT_TTL_S), int(EXPORT_TTL_S)))  # gradio's copies of the exports too
    with gr.Blocks(**blocks) as demo:
        _header(service)
        panel = shared_panel()
        controls = _settings_panel(config)
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat"):
                chat = _chat_tab(service, controls, exports, config, sharing)
            with gr.Tab("Score text", id="score"):
                score = _score_tab(service, controls, exports, config, sharing)
            with gr.Tab("Guess the next token", id="guess"):
                guess_tab(service, shown_as_gr_errors, model)
            with gr.Tab("Compare", id="compare"):
                compare_tab(variants, shown_as_gr_errors, model)
        wire_panel(panel, sharing, demo, controls.view, shown_as_gr_errors, model)
        _wire_continue(panel, tabs, chat, score, controls)
        _api(service, config, variants, sharing)
    return demo


def _header(service: Service) -> None:
    drift = service.drift
    gr.Markdown(
        "# greedyscore\nEvery token of a greedy reply with its "
        + (f"**true model probability** ({service.score_source})" if drift is None else
           f"**model probability** ({service.score_source.removesuffix('; ' + drift.note())})")
        + ". Hover or focus a token for its alternatives.\n\n"
        f"**Model:** `{neutral(service.model_name)}` · **backend:** `{neutral(service.backend)}` · greedy decoding"
        + ("" if drift is None else f" · **{drift.note()}**"),
        elem_id="gs-header",
    )


def _settings_panel(config: UIConfig) -> Controls:
    with gr.Accordion("Settings", open=False):
        with gr.Row():
            max_new = gr.Slider(1, config.max_new_tokens_cap, value=config.max_new_tokens, step=1,
                                label="max new tokens")
            top_k = gr.Slider(1, MAX_TOP_K, value=5, step=1, label="alternatives per token (top-k)")
            verify = gr.Checkbox(value=True, label="verify: rescore the reply and mark near ties")
        with gr.Row():
            color_by = gr.Radio(list(COLOR_MODES), value="probability", label="colour by", elem_id="gs-color-by")
            palette = gr.Radio(list(PALETTES), value=DEFAULT_PALETTE, label="palette")
            threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="underline below (threshold)")
    return Controls(max_new, top_k, verify, color_by, palette, threshold)


def _numbers_panel(noun: str, elem: str, json_label: str = "tokens (JSON)") -> tuple[gr.Plot, gr.Plot, gr.HTML,
                                                                                    gr.File, gr.File]:
    """Chart and histogram tabs, stats, downloads: the numbers of one reply."""
    with gr.Tabs():
        with gr.Tab(f"Confidence along the {noun}"):
            fig = gr.Plot(elem_id=f"gs-{elem}-chart", show_label=False)
        with gr.Tab("Histogram"):
            hist = gr.Plot(elem_id=f"gs-{elem}-hist", show_label=False)
    stats = gr.HTML(elem_id=f"gs-{elem}-stats")
    with gr.Row():
        json_file = gr.File(label=json_label, interactive=False, elem_id=f"gs-{elem}-json")
        csv_file = gr.File(label="tokens (CSV)", interactive=False, elem_id=f"gs-{elem}-csv")
    return fig, hist, stats, json_file, csv_file


def _redraw_on_view_change(controls: Controls, reply: gr.State, outputs: list) -> None:
    def redraw(reply: ScoredReply | None, color_by: str, palette: str, threshold: float):
        with shown_as_gr_errors():
            return render_outputs(reply, View.make(color_by, palette, threshold))

    for comp in controls.view:
        comp.change(redraw, [reply, *controls.view], outputs, api_visibility="private")


@dataclass
class ChatSession:
    """One visitor's chat, kept in `gr.State` and changed in place: the conversation, the cancel
    event of the turn being generated (Stop sets it), and a lock so that a visitor's turns and
    forks run one at a time. Every change is applied to the current conversation, so selecting
    a turn meanwhile is never lost; `epoch` tells a turn that Clear came while it ran."""

    conv: Conversation = field(default_factory=Conversation)
    cancel: threading.Event | None = None
    epoch: int = 0
    lock: threading.Lock | None = None  # made on first use: gr.State deep-copies its initial value

    def arm(self) -> None:
        """Before a turn is queued: its cancel event exists at once, so Stop works while it waits."""
        if self.lock is None or not self.lock.locked():
            self.cancel = threading.Event()

    def stop(self) -> None:
        if self.cancel is not None:
            self.cancel.set()

    @contextmanager
    def model_turn(self) -> Iterator[threading.Event]:
        """Hold the visitor's model lock for a turn or a fork; refuse a second one meanwhile."""
        with _SESSION_INIT:
            if self.lock is None:
                self.lock = threading.Lock()
        if not self.lock.acquire(blocking=False):
            raise BadInput("a reply is still being generated: wait for it, or press Stop")
        if self.cancel is None:  # a fork, or a turn that was not armed
            self.cancel = threading.Event()
        try:
            yield self.cancel
        finally:
            self.cancel = None
            self.lock.release()


_SESSION_INIT = threading.Lock()


@dataclass(frozen=True)
class ChatParts:
    """What a shared conversation's "Continue" fills: the session and the Chat tab's outputs."""

    box: gr.State
    outputs: list  # conversation, chart, histogram, stats, JSON, CSV, fork panel, fork chart
    show: Callable[[Conversation, View], tuple]  # -> values for `outputs`


@dataclass(frozen=True)
class ScoreParts:
    text: gr.Textbox
    prompt: gr.Textbox
    outputs: list  # token HTML, chart, histogram, stats
    reply: gr.State
    after: gr.State  # the messages the text was scored after


def _chat_tab(service: Service, controls: Controls, exports: Exports, config: UIConfig,
              sharing: Sharing) -> ChatParts:
    box = gr.State(ChatSession())
    can_share = sharing.store is not None

    def conv_html(c: Conversation, view: View) -> str:
        return conversation_html(c, view, share=can_share)

    def forks_of(c: Conversation, view: View, busy: str = "") -> tuple[str, Any]:
        return fork_outputs(c, view, busy, can_share)

    def panel_html(c: Conversation, view: View, busy: str = "") -> str:
        return fork_panel_html(c, view, busy, can_share)

    conv = gr.HTML(conv_html(Conversation(), DEFAULT_VIEW), elem_id="gs-reply", js_on_load=EXPLORE_JS,
                   label="Conversation")
    live = gr.HTML("", elem_id="gs-live")
    with gr.Row():
        msg = gr.Textbox(placeholder="Ask something…", show_label=False, scale=8, elem_id="gs-msg", max_lines=8)
        send = gr.Button("Send", variant="primary", scale=1, elem_id="gs-send")
        stop = gr.Button("Stop", variant="stop", scale=1, elem_id="gs-stop")
        clear = gr.Button("Clear", scale=1, elem_id="gs-clear")
    gr.Examples([e.prompt for e in CHAT_EXAMPLES], inputs=[msg], label="Examples",
                example_labels=[e.label for e in CHAT_EXAMPLES])
    gr.Markdown("Click a reply (or Tab to it and press Enter) to chart it; choose an alternative in a token's "
                "tooltip to see where the other road leads." + (" **Share** under a reply gives a link to it."
                                                              if can_share else ""), elem_id="gs-hint")
    link = link_box()
    fig, hist, stats, json_file, csv_file = _numbers_panel("reply", "reply", "tokens and forks (JSON)")
    with gr.Accordion("Explore: the roads not taken", open=True):
        forks = gr.HTML(panel_html(Conversation(), DEFAULT_VIEW), elem_id="gs-forks", js_on_load=EXPLORE_JS)
        fork_fig = gr.Plot(elem_id="gs-fork-chart", show_label=False)
    selected = [fig, hist, stats, json_file, csv_file]
    skip = gr.skip()

    def numbers(c: Conversation, view: View) -> tuple:
        """Chart, histogram, stats and downloads of the selected turn."""
        turn = c.current
        if turn is None or turn.reply is None:
            return None, None, "", None, None
        return (*render_numbers(turn.reply, view), *exports.write(turn.reply, turn.to_json()))

    def turn(message: str, s: ChatSession, max_new: float, top_k: float, verify: bool,
             color_by: str, palette: str, threshold: float):
        """One turn, streamed below the conversation as plain text, then coloured in place."""
        with shown_as_gr_errors(), s.model_turn() as cancel:
            view = View.make(color_by, palette, threshold)
            settings = parse_settings(max_new, top_k, verify)
            events = service.stream([*s.conv.messages(), Message("user", message or "")], settings, cancel=cancel)
            epoch, s.conv = s.epoch, s.conv.ask(message)
            yield conv_html(s.conv, view), live_html(""), "", *(skip,) * 7
            try:
                with closing(events):
                    for event in events:
                        if isinstance(event, TextDelta):  # an empty delta is a heartbeat
                            yield skip, live_html(event.text) if event.delta else skip, *(skip,) * 8
                        elif s.epoch == epoch:  # not cleared meanwhile
                            s.conv = s.conv.answer(event)
                            yield (conv_html(s.conv, view), "", "", *numbers(s.conv, view),
                                   *forks_of(s.conv, view))
            except GreedyScoreError:  # put the page back as it was, the message back in its box
                if s.epoch == epoch:
                    s.conv = s.conv.retract()
                yield conv_html(s.conv, view), "", message, *(skip,) * 7
                raise

    def explore(s: ChatSession, max_new: float, top_k: float, verify: bool, color_by: str, palette: str,
                threshold: float, evt: gr.EventData):
        """A click in the conversation or the fork panel: select a turn, show a fork, or fork."""
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            data = evt._data or {}
            action = data.get("action")
            if action == "select":
                s.conv = _checked(lambda: s.conv.select(whole_number("turn", data.get("turn"))))
                yield skip, *numbers(s.conv, view), *forks_of(s.conv, view)
            elif action == "show":
                n, node = _source(data.get("source"))
                s.conv = _checked(lambda: s.conv.show(n, node))
                yield skip, *(skip,) * 5, *forks_of(s.conv, view)
            elif action == "fork":
                yield from fork(s, view, data, parse_settings(max_new, top_k, verify))
            else:  # Share (its own handler): nothing here changes
                yield skip, *(skip,) * 5, skip, skip

    def fork(s: ChatSession, view: View, data: dict, settings: Settings):
        n, node = _source(data.get("source"))
        with s.model_turn() as cancel:
            parent = _checked(lambda: s.conv.turns[n].path(node))
            events = service.stream_fork(s.conv.messages(n), [t.id for t in parent.tokens], data.get("at"),
                                         data.get("token"), settings, cancel=cancel)  # validates at and token
            epoch = s.epoch
            at, token = int(data["at"]), int(data["token"])
            s.conv = s.conv.select(n) if s.conv.selected != n else s.conv
            busy = f"forking at token {at}: {service.token_text(token)!r} instead of {parent.tokens[at].text!r}…"
            yield skip, *(skip,) * 5, *forks_of(s.conv, view, busy)
            try:
                with closing(events):
                    for event in events:
                        if isinstance(event, TextDelta):
                            if event.delta:
                                yield skip, *(skip,) * 5, panel_html(s.conv, view, f"{busy} {event.text}"), skip
                        elif s.epoch == epoch:  # not cleared meanwhile
                            s.conv = s.conv.add_fork(n, node, at, token, event)
            except GreedyScoreError:
                yield skip, *(skip,) * 5, *forks_of(s.conv, view)
                raise
            yield skip, *numbers(s.conv, view), *forks_of(s.conv, view)

    def redraw(s: ChatSession, color_by: str, palette: str, threshold: float):
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            reply = s.conv.current.reply if s.conv.current else None
            return conv_html(s.conv, view), *render_numbers(reply, view), *forks_of(s.conv, view)

    def clear_all(s: ChatSession):
        s.stop()
        s.epoch += 1
        s.conv = Conversation()
        return conv_html(s.conv, DEFAULT_VIEW), "", None, None, "", None, None, \
            panel_html(s.conv, DEFAULT_VIEW), None

    model = dict(concurrency_id=MODEL_EVENTS, concurrency_limit=config.concurrency, api_visibility="private")
    now = dict(queue=False, api_visibility="private")
    inputs = [msg, box, controls.max_new, controls.top_k, controls.verify, *controls.view]
    outputs = [conv, live, msg, *selected, forks, fork_fig]
    for trigger in (send.click, msg.submit):
        trigger(ChatSession.arm, [box], None, **now).then(turn, inputs, outputs, **model)
    stop.click(ChatSession.stop, [box], None, **now)
    clear.click(clear_all, [box], [conv, live, *selected, forks, fork_fig], **now)
    explore_inputs = [box, controls.max_new, controls.top_k, controls.verify, *controls.view]
    for source in (conv, forks):
        source.click(explore, explore_inputs, [conv, *selected, forks, fork_fig], **model)
    for comp in controls.view:
        comp.change(redraw, [box, *controls.view], [conv, fig, hist, stats, forks, fork_fig],
                    api_visibility="private")

    def share_path(s: ChatSession, request: gr.Request, evt: gr.EventData):
        """Share under a reply or a fork: store that path with the conversation before it."""
        data = evt._data or {}
        if data.get("action") != "share":
            return skip
        with shown_as_gr_errors():
            n, node = _source(data.get("source"))
            item = share_turn(s.conv, n, node, service.identity, time.time())
            _, url = sharing.put(item, request)
            return share_link_html(url, sharing.expires(item.created))

    for source in (conv, forks):
        source.click(share_path, [box], [link], queue=False, api_visibility="private")

    def show(c: Conversation, view: View) -> tuple:
        return conv_html(c, view), *numbers(c, view), *forks_of(c, view)

    return ChatParts(box, [conv, *selected, forks, fork_fig], show)


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


def _score_tab(service: Service, controls: Controls, exports: Exports, config: UIConfig,
               sharing: Sharing) -> ScoreParts:
    text = gr.Textbox(lines=6, label="Text to score (teacher-forced)", elem_id="gs-score-text")
    with gr.Row():
        prompt = gr.Textbox(lines=1, label="…as the assistant's reply to (optional user message)", scale=4)
        conversation = gr.Checkbox(label='the text is a conversation: JSON [{"role", "content"}, ...]', scale=2)
    with gr.Row():
        button = gr.Button("Score", variant="primary", elem_id="gs-score-btn", scale=3)
        sample = gr.Button("Load the calibration sample (English + Chinese)", elem_id="gs-cal-sample", scale=2)
    gr.Examples(list(SCORE_EXAMPLES), inputs=[text], label="Texts to try")
    shown = gr.HTML(legend_html(DEFAULT_VIEW), label="Text, token by token", elem_id="gs-score")
    with gr.Row():
        share_btn = gr.Button("Share this result", elem_id="gs-score-share", size="sm", scale=0,
                              visible=sharing.store is not None)
        link = link_box()
    fig, hist, stats, json_file, csv_file = _numbers_panel("text", "score")
    with gr.Accordion("Calibration: is the model as often right as it is sure?", open=True):
        gr.Markdown("At each position of the text, the model's most likely next token (top-1) is *right* when it "
                    "is the real next token. Positions are grouped by the top-1 probability: a calibrated model "
                    "is right 70% of the time when it says 70% (the dashed diagonal).")
        cal_summary = gr.HTML(elem_id="gs-cal-summary")
        cal_plot = gr.Plot(elem_id="gs-cal-plot", show_label=False)
    reply_state = gr.State(None)
    scored_after = gr.State(())  # the messages the text was scored after, for Share
    drawn = [shown, fig, hist, stats]
    sample.click(lambda: (CALIBRATION_SAMPLE, False), None, [text, conversation], api_visibility="private")

    def score(text: str, prompt: str, conversation: bool, top_k: float, color_by: str, palette: str,
              threshold: float):
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            settings = parse_settings(1, top_k)
            after: tuple[Message, ...] = ()
            if conversation:
                reply = service.score_messages(parse_messages_json(text), settings)
            else:
                reply = service.score_text(text or "", settings, prompt=prompt or None)
                after = (Message("user", prompt),) if prompt else ()
            cal = reply.calibration
            return (*render_outputs(reply, view), reply, after, *exports.write(reply), calibration_html(cal),
                    reliability_figure(cal), "")

    def share_scored(reply: ScoredReply | None, after: tuple[Message, ...], request: gr.Request):
        with shown_as_gr_errors():
            if reply is None:
                raise BadInput("score a text first, then share it")
            item = share_text(reply, after, service.identity, time.time())
            return share_link_html(sharing.put(item, request)[1], sharing.expires(item.created))

    button.click(score, [text, prompt, conversation, controls.top_k, *controls.view],
                 [*drawn, reply_state, scored_after, json_file, csv_file, cal_summary, cal_plot, link],
                 concurrency_id=MODEL_EVENTS, concurrency_limit=config.concurrency, api_visibility="private")
    share_btn.click(share_scored, [reply_state, scored_after], [link], queue=False, api_visibility="private")
    _redraw_on_view_change(controls, reply_state, drawn)
    return ScoreParts(text, prompt, drawn, reply_state, scored_after)


def _wire_continue(panel: Any, tabs: gr.Tabs, chat: ChatParts, score: ScoreParts, controls: Controls) -> None:
    """"Continue this conversation": the shared chat becomes the visitor's own (forks and all); a
    shared text opens in Score text."""
    skip = gr.skip()

    def proceed(item: Any, s: ChatSession, color_by: str, palette: str, threshold: float):
        with shown_as_gr_errors():
            if item is None:
                raise BadInput("open a share link first")
            view = View.make(color_by, palette, threshold)
            n_chat, n_score = len(chat.outputs), len(score.outputs)
            if item.kind == "chat":
                if item.context:
                    raise BadInput("this reply came with earlier messages (a system prompt or history sent through the "
                                   "API) that a chat here cannot hold: use Re-run, or the API with those messages")
                s.stop()
                s.epoch += 1
                s.conv = item.conversation
                return gr.Tabs(selected="chat"), *chat.show(s.conv, view), *(skip,) * (4 + n_score)
            prompt = item.messages[-1].content if item.messages else ""
            return (gr.Tabs(selected="score"), *(skip,) * n_chat, item.reply.text, prompt,
                    *render_outputs(item.reply, view), item.reply, item.messages)

    panel.proceed.click(proceed, [panel.item, chat.box, *controls.view],
                        [tabs, *chat.outputs, score.text, score.prompt, *score.outputs, score.reply, score.after],
                        api_visibility="private")


def _api(service: Service, config: UIConfig, variants: Variants, sharing: Sharing) -> None:
    """Named endpoints for gradio_client. Plain inputs, so out-of-range values reach our own
    validation and its messages; every parameter after the first has a default."""

    def api_outputs(reply: ScoredReply, view: View, kind: str = "chat", messages: list[Message] | None = None,
                    settings: Settings | None = None) -> tuple[str, Any, dict, str]:
        """The tokens JSON says how it was made ("kind", "messages", "settings"): /share stores it whole."""
        page, fig, _, stats = render_outputs(reply, view)
        made = {"kind": kind, "messages": [{"role": m.role, "content": m.content} for m in messages or []],
                **({"settings": asdict(settings)} if settings is not None else {})}
        return page, fig, {**reply.to_json(), **made}, stats

    def chat(message: str, history: Any = None, max_new_tokens: float = API_DEFAULTS.max_new_tokens,
             top_k: float = API_DEFAULTS.top_k, verify: bool = API_DEFAULTS.verify,
             color_by: str = DEFAULT_VIEW.color_by, palette: str = DEFAULT_VIEW.palette,
             threshold: float = DEFAULT_VIEW.threshold):
        """One turn, not streamed -> (token HTML, figure, tokens JSON, stats HTML)."""
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            settings = parse_settings(max_new_tokens, top_k, verify)
            msgs = [*(parse_messages(history) if history else []), Message("user", message or "")]
            return api_outputs(service.chat(msgs, settings), view, "chat", msgs, settings)

    def score_text(text: str, prompt: str = "", top_k: float = API_DEFAULTS.top_k,
                   color_by: str = DEFAULT_VIEW.color_by, palette: str = DEFAULT_VIEW.palette,
                   threshold: float = DEFAULT_VIEW.threshold):
        """Teacher-forced scoring of text -> (token HTML, figure, tokens JSON, stats HTML)."""
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            settings = parse_settings(1, top_k)
            reply = service.score_text(text or "", settings, prompt=prompt or None)
            return api_outputs(reply, view, "text", [Message("user", prompt)] if prompt else [], settings)

    def calibration(text: str, prompt: str = "", top_k: float = API_DEFAULTS.top_k):
        """Top-1 calibration of the model on known text -> (calibration JSON {"bins": [{"lo", "hi", "n",
        "confidence", "accuracy"}], "ece", "brier", "n", "accuracy"}, reliability figure, summary HTML)."""
        with shown_as_gr_errors():
            reply = service.score_text(text or "", parse_settings(1, top_k), prompt=prompt or None)
            cal = reply.calibration
            return cal.to_json(), reliability_figure(cal), calibration_html(cal)

    def compare(text: str, prompt: str = "", against: str = "bfloat16", system_a: str = "", system_b: str = "",
                top_k: float = API_DEFAULTS.top_k, conversation_b: Any = None):
        """The text scored under A (this model, system prompt A) and B (against: "another system prompt",
        "another conversation" (conversation_b: the messages the text replies to), "bfloat16", "int8", or
        "another model" with --compare-model), aligned on characters ->
        (side-by-side HTML, figure, comparison JSON {"spans": [{"text", "logprob_a", "logprob_b", "delta",
        "points", ...}], "same_tokens", ...})."""
        with shown_as_gr_errors():
            messages_b = parse_messages(conversation_b) if conversation_b else ()
            return compare_outputs(compare_text(variants, text or "", against, prompt or "", system_a or "",
                                                system_b or "", parse_settings(1, top_k).top_k, messages_b))

    def fork(messages: Any, reply_token_ids: Any, at: float, token_id: float,
             max_new_tokens: float = API_DEFAULTS.max_new_tokens, top_k: float = API_DEFAULTS.top_k,
             verify: bool = API_DEFAULTS.verify, color_by: str = DEFAULT_VIEW.color_by,
             palette: str = DEFAULT_VIEW.palette, threshold: float = DEFAULT_VIEW.threshold):
        """The reply had the model taken token_id at position at -> the same four outputs as /chat
        (tokens JSON: "forked_at", and "shared" on the prefix). Empty reply ids: a fresh greedy reply."""
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            settings = parse_settings(max_new_tokens, top_k, verify)
            msgs = parse_messages(messages)
            if not reply_token_ids:
                reply_token_ids = [t.id for t in service.chat(msgs, settings).tokens]
            reply = service.fork(msgs, reply_token_ids, at, token_id, settings)
            return api_outputs(reply, view, "chat", msgs, settings)

    def share(tokens: Any, request: gr.Request):
        """Store a result: the tokens JSON that /chat, /fork or /score_text returned -> {"id", "url"}
        (open the url in a browser, or pass the id to /shared)."""
        with shown_as_gr_errors():
            item = share_reply_json(tokens, service.identity, time.time())
            item_id, url = sharing.put(item, request)
            return {"id": item_id, "url": url}

    def shared(item_id: str, color_by: str = DEFAULT_VIEW.color_by, palette: str = DEFAULT_VIEW.palette,
               threshold: float = DEFAULT_VIEW.threshold):
        """A shared result by id -> the same four outputs as /chat (tokens JSON: the whole stored
        document: "kind", "messages", "settings", "model" identity, "created", and the reply or the
        conversation)."""
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            item, _ = sharing.view(item_id, view)
            page, fig, _, stats = render_outputs(item.reply, view)
            return page, fig, item.to_json(), stats

    with gr.Row(visible=False):
        message = gr.Textbox(label="message")
        history = gr.JSON(value=[], label="history")
        max_new = gr.Number(value=API_DEFAULTS.max_new_tokens, label="max_new_tokens")
        top_k = gr.Number(value=API_DEFAULTS.top_k, label="top_k")
        verify = gr.Checkbox(value=API_DEFAULTS.verify, label="verify")
        prompt = gr.Textbox(value="", label="prompt")
        messages, reply_ids = gr.JSON(label="messages"), gr.JSON(label="reply_token_ids")
        at, token_id = gr.Number(label="at"), gr.Number(label="token_id")
        view = [gr.Textbox(value=DEFAULT_VIEW.color_by, label="color_by"),
                gr.Textbox(value=DEFAULT_VIEW.palette, label="palette"),
                gr.Number(value=DEFAULT_VIEW.threshold, label="threshold")]
        outputs = [gr.HTML(), gr.Plot(), gr.JSON(), gr.HTML()]
        cal_outputs = [gr.JSON(), gr.Plot(), gr.HTML()]
        against, system_a, system_b = gr.Textbox(value="bfloat16"), gr.Textbox(value=""), gr.Textbox(value="")
        cmp_outputs = [gr.HTML(), gr.Plot(), gr.JSON()]
        conversation_b = gr.JSON(value=None, label="conversation_b")
        tokens_json, share_out, item_id = gr.JSON(label="tokens"), gr.JSON(), gr.Textbox(label="id")
        chat_btn, score_btn, fork_btn, cal_btn, cmp_btn, share_btn, shared_btn = (gr.Button() for _ in range(7))
    model = dict(concurrency_id=MODEL_EVENTS, concurrency_limit=config.concurrency)
    chat_btn.click(chat, [message, history, max_new, top_k, verify, *view], outputs, api_name="chat", **model)
    score_btn.click(score_text, [message, prompt, top_k, *view], outputs, api_name="score_text", **model)
    fork_btn.click(fork, [messages, reply_ids, at, token_id, max_new, top_k, verify, *view], outputs,
                   api_name="fork", **model)
    cal_btn.click(calibration, [message, prompt, top_k], cal_outputs, api_name="calibration", **model)
    cmp_btn.click(compare, [message, prompt, against, system_a, system_b, top_k, conversation_b], cmp_outputs,
                  api_name="compare", **model)
    cheap = dict(concurrency_limit=None)  # store work, no model: every request at once (the store locks)
    share_btn.click(share, [tokens_json], [share_out], api_name="share", **cheap)
    shared_btn.click(shared, [item_id, *view], outputs, api_name="shared", **cheap)


def launch(demo: gr.Blocks, trusted_proxies: str = "", **kwargs: Any) -> None:
    """`demo.launch(**kwargs)` with what it needs besides: the CSS (a launch argument in Gradio 6)
    and which proxies may name the client. uvicorn rewrites the client address from
    X-Forwarded-For for the addresses in FORWARDED_ALLOW_IPS (read when Gradio builds its server),
    loopback unless set: any local user or proxy could then claim any address and step around the
    share rate limit. Only `trusted_proxies` (default: none) is trusted."""
    os.environ["FORWARDED_ALLOW_IPS"] = trusted_proxies
    demo.launch(css=CSS, **kwargs)
