"""The Gradio app: layout and event wiring only.

Model work goes through `Service` (a chat turn is `Service.stream`); HTML and figures come from
`render`; download files from `Exports`. Everything a visitor owns (history, last reply) lives
in per-session `gr.State`; the Service is the one shared object.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any

import gradio as gr

from .errors import GreedyScoreError
from .exports import EXPORT_TTL_S, Exports
from .render import COLOR_MODES, CSS, DEFAULT_PALETTE, PALETTES, View, legend_html, render_outputs
from .service import Service, parse_messages, parse_messages_json, parse_settings
from .types import MAX_TOP_K, Message, ScoredReply, Settings, TextDelta

EXAMPLES = [
    "What is the capital of France?",
    "你好，请介绍一下你自己",
    "Write a Python function that checks whether a number is prime.",
    "Why does greedy decoding always pick the most likely token?",
]
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


def history_messages(history: list[dict] | None) -> list[Message]:
    """Chatbot history (messages format; content a string or [{"type": "text", "text"}]) -> Messages."""
    if not history:
        return []
    clean = [{"role": h.get("role"), "content": _content_text(h.get("content"))} for h in history]
    return parse_messages(clean)


def _content_text(content: Any) -> Any:
    if isinstance(content, list):
        return "".join(c.get("text", "") if isinstance(c, dict) else str(c) for c in content)
    return content


def _shown(history: list[dict]) -> list[dict]:
    """What the Chatbot displays: escaped copies (it renders HTML even without markdown)."""
    return [{"role": h["role"], "content": html.escape(str(h["content"]), quote=True)} for h in history]


# --- layout ------------------------------------------------------------------------------------
def build_demo(service: Service, config: UIConfig = UIConfig(), exports: Exports | None = None) -> gr.Blocks:
    """The whole app: Chat and Score-text tabs, plus API endpoints /chat and /score_text."""
    exports = exports or Exports()
    blocks = dict(title="greedyscore: what the model was sure of", fill_width=True,
                  delete_cache=(int(EXPORT_TTL_S), int(EXPORT_TTL_S)))  # gradio's copies of the exports too
    with gr.Blocks(**blocks) as demo:
        _header(service)
        controls = _settings_panel(config)
        with gr.Tab("Chat"):
            _chat_tab(service, controls, exports, config)
        with gr.Tab("Score text"):
            _score_tab(service, controls, exports, config)
        _api(service, config)
    return demo


def _header(service: Service) -> None:
    gr.Markdown(
        "# greedyscore\nEvery token of a greedy reply with its **true model probability** "
        f"({service.score_source}). Hover or focus a token for its alternatives.\n\n"
        f"**Model:** `{service.model_name}` · **backend:** `{service.backend}` · greedy decoding",
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


def _reply_panel(noun: str, elem: str) -> tuple[gr.HTML, gr.Plot, gr.Plot, gr.HTML, gr.File, gr.File, gr.State]:
    """Token HTML, chart and histogram tabs, stats, downloads and the reply's state."""
    shown = gr.HTML(legend_html(DEFAULT_VIEW.color_by, DEFAULT_VIEW.palette, DEFAULT_VIEW.threshold),
                    label=f"{noun.capitalize()}, token by token", elem_id=f"gs-{elem}")
    with gr.Tabs():
        with gr.Tab(f"Confidence along the {noun}"):
            fig = gr.Plot(elem_id=f"gs-{elem}-chart", show_label=False)
        with gr.Tab("Histogram"):
            hist = gr.Plot(elem_id=f"gs-{elem}-hist", show_label=False)
    stats = gr.HTML(elem_id=f"gs-{elem}-stats")
    with gr.Row():
        json_file = gr.File(label="tokens (JSON)", interactive=False, elem_id=f"gs-{elem}-json")
        csv_file = gr.File(label="tokens (CSV)", interactive=False, elem_id=f"gs-{elem}-csv")
    return shown, fig, hist, stats, json_file, csv_file, gr.State(None)


def _redraw_on_view_change(controls: Controls, reply: gr.State, outputs: list) -> None:
    def redraw(reply: ScoredReply | None, color_by: str, palette: str, threshold: float):
        with shown_as_gr_errors():
            return render_outputs(reply, View.make(color_by, palette, threshold))

    for comp in controls.view:
        comp.change(redraw, [reply, *controls.view], outputs, api_visibility="private")


def _chat_tab(service: Service, controls: Controls, exports: Exports, config: UIConfig) -> None:
    chatbot = gr.Chatbot(label="Conversation", height=320, elem_id="gs-chatbot", render_markdown=False)
    history = gr.State([])  # this session's raw conversation
    with gr.Row():
        msg = gr.Textbox(placeholder="Ask something…", show_label=False, scale=8, elem_id="gs-msg", max_lines=8)
        send = gr.Button("Send", variant="primary", scale=1, elem_id="gs-send")
        stop = gr.Button("Stop", variant="stop", scale=1, elem_id="gs-stop")
        clear = gr.Button("Clear", scale=1)
    gr.Examples(EXAMPLES, inputs=[msg], label="Examples")
    shown, fig, hist, stats, json_file, csv_file, last_reply = _reply_panel("reply", "reply")
    drawn = [shown, fig, hist, stats]

    def turn(message: str, past: list[dict], max_new: float, top_k: float, verify: bool,
             color_by: str, palette: str, threshold: float):
        """One turn, streamed: plain text as it comes, then coloured tokens. `past` is this
        session's raw conversation; the Chatbot only ever gets escaped copies."""
        skip = gr.skip()
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            settings = parse_settings(max_new, top_k, verify)
            events = service.stream([*history_messages(past), Message("user", message or "")], settings)
            asked = [*(past or []), {"role": "user", "content": message}]
            yield _shown(asked), "", *(skip,) * 8
            with closing(events):  # closing it (Stop cancels this event) stops the generation
                for event in events:
                    if isinstance(event, TextDelta):  # an empty delta is a heartbeat: Stop is seen within it
                        text = _shown([*asked, {"role": "assistant", "content": event.text}]) if event.delta else skip
                        yield text, *(skip,) * 9
                        continue
                    final = [*asked, {"role": "assistant", "content": event.text}]
                    yield _shown(final), "", *render_outputs(event, view), event, *exports.write(event), final

    model = dict(concurrency_id=MODEL_EVENTS, concurrency_limit=config.concurrency, api_visibility="private")
    inputs = [msg, history, controls.max_new, controls.top_k, controls.verify, *controls.view]
    outputs = [chatbot, msg, *drawn, last_reply, json_file, csv_file, history]
    runs = [send.click(turn, inputs, outputs, **model), msg.submit(turn, inputs, outputs, **model)]
    stop.click(None, cancels=runs, api_visibility="private")
    clear.click(lambda: ([], [], None, *render_outputs(None, DEFAULT_VIEW)), None,
                [chatbot, history, last_reply, *drawn], api_visibility="private")
    _redraw_on_view_change(controls, last_reply, drawn)


def _score_tab(service: Service, controls: Controls, exports: Exports, config: UIConfig) -> None:
    text = gr.Textbox(lines=6, label="Text to score (teacher-forced)", elem_id="gs-score-text")
    with gr.Row():
        prompt = gr.Textbox(lines=1, label="…as the assistant's reply to (optional user message)", scale=4)
        conversation = gr.Checkbox(label='the text is a conversation: JSON [{"role", "content"}, ...]', scale=2)
    button = gr.Button("Score", variant="primary", elem_id="gs-score-btn")
    shown, fig, hist, stats, json_file, csv_file, reply_state = _reply_panel("text", "score")
    drawn = [shown, fig, hist, stats]

    def score(text: str, prompt: str, conversation: bool, top_k: float, color_by: str, palette: str,
              threshold: float):
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            settings = parse_settings(1, top_k)
            if conversation:
                reply = service.score_messages(parse_messages_json(text), settings)
            else:
                reply = service.score_text(text or "", settings, prompt=prompt or None)
            return (*render_outputs(reply, view), reply, *exports.write(reply))

    button.click(score, [text, prompt, conversation, controls.top_k, *controls.view],
                 [*drawn, reply_state, json_file, csv_file], concurrency_id=MODEL_EVENTS,
                 concurrency_limit=config.concurrency, api_visibility="private")
    _redraw_on_view_change(controls, reply_state, drawn)


def _api(service: Service, config: UIConfig) -> None:
    """Named endpoints for gradio_client. Plain inputs, so out-of-range values reach our own
    validation and its messages; every parameter after the first has a default."""

    def api_outputs(reply: ScoredReply, view: View) -> tuple[str, Any, dict, str]:
        page, fig, _, stats = render_outputs(reply, view)
        return page, fig, reply.to_json(), stats

    def chat(message: str, history: Any = None, max_new_tokens: float = API_DEFAULTS.max_new_tokens,
             top_k: float = API_DEFAULTS.top_k, verify: bool = API_DEFAULTS.verify,
             color_by: str = DEFAULT_VIEW.color_by, palette: str = DEFAULT_VIEW.palette,
             threshold: float = DEFAULT_VIEW.threshold):
        """One turn, not streamed -> (token HTML, figure, tokens JSON, stats HTML)."""
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            settings = parse_settings(max_new_tokens, top_k, verify)
            past = parse_messages(history) if history else []
            return api_outputs(service.chat([*past, Message("user", message or "")], settings), view)

    def score_text(text: str, prompt: str = "", top_k: float = API_DEFAULTS.top_k,
                   color_by: str = DEFAULT_VIEW.color_by, palette: str = DEFAULT_VIEW.palette,
                   threshold: float = DEFAULT_VIEW.threshold):
        """Teacher-forced scoring of text -> (token HTML, figure, tokens JSON, stats HTML)."""
        with shown_as_gr_errors():
            view = View.make(color_by, palette, threshold)
            reply = service.score_text(text or "", parse_settings(1, top_k), prompt=prompt or None)
            return api_outputs(reply, view)

    with gr.Row(visible=False):
        message = gr.Textbox(label="message")
        history = gr.JSON(value=[], label="history")
        max_new = gr.Number(value=API_DEFAULTS.max_new_tokens, label="max_new_tokens")
        top_k = gr.Number(value=API_DEFAULTS.top_k, label="top_k")
        verify = gr.Checkbox(value=API_DEFAULTS.verify, label="verify")
        prompt = gr.Textbox(value="", label="prompt")
        view = [gr.Textbox(value=DEFAULT_VIEW.color_by, label="color_by"),
                gr.Textbox(value=DEFAULT_VIEW.palette, label="palette"),
                gr.Number(value=DEFAULT_VIEW.threshold, label="threshold")]
        outputs = [gr.HTML(), gr.Plot(), gr.JSON(), gr.HTML()]
        chat_btn, score_btn = gr.Button(), gr.Button()
    model = dict(concurrency_id=MODEL_EVENTS, concurrency_limit=config.concurrency)
    chat_btn.click(chat, [message, history, max_new, top_k, verify, *view], outputs, api_name="chat", **model)
    score_btn.click(score_text, [message, prompt, top_k, *view], outputs, api_name="score_text", **model)


CHATBOT_CSS = "#gs-chatbot .message-content, #gs-chatbot .message-content * { white-space: pre-wrap; }"


def launch_kwargs() -> dict[str, Any]:
    """What `launch()` needs besides host/port: in Gradio 6 the CSS is a launch argument."""
    return {"css": CSS + "\n" + CHATBOT_CSS}
