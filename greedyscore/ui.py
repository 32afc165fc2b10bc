"""The Gradio app: layout and event wiring only.

Model work goes through `Service`; HTML and figures come from `render`. Everything a visitor
owns (history, last reply) lives in per-session `gr.State`; the Service is the one shared object.
"""

from __future__ import annotations

import html
import json
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from .errors import BadInput, GreedyScoreError
from .render import (
    CSS,
    DEFAULT_PALETTE,
    PALETTES,
    confidence_figure,
    histogram_figure,
    legend_html,
    reply_html,
    stats_html,
    tokens_csv,
)
from .render.colors import check_mode, check_palette
from .service import Service, parse_messages
from .types import MAX_TOP_K, Message, ScoredReply, Settings

COLOR_MODES = {"probability": "prob", "margin (p1 − p2)": "margin", "entropy": "entropy"}
EXAMPLES = [
    "What is the capital of France?",
    "你好，请介绍一下你自己",
    "Write a Python function that checks whether a number is prime.",
    "Why does greedy decoding always pick the most likely token?",
]
MODEL_EVENTS = "model"  # one concurrency group shared by every event that runs the model


@dataclass(frozen=True)
class UIConfig:
    max_new_tokens: int = 128  # default of the slider
    max_new_tokens_cap: int = 1024  # the slider's top
    concurrency: int = 1  # model events running at once (the Service batches/serialises them)


@dataclass(frozen=True)
class View:
    """How to draw a reply: chosen in the UI, validated here."""

    color_by: str = "prob"
    palette: str = DEFAULT_PALETTE
    threshold: float = 0.5

    @staticmethod
    def make(color_by: str, palette: str, threshold: float) -> View:
        mode = check_mode(COLOR_MODES.get(color_by, color_by))  # UI label or mode name
        check_palette(palette)
        if threshold is None or not 0.0 <= float(threshold) <= 1.0:
            raise BadInput(f"threshold must be between 0 and 1, got {threshold!r}")
        return View(mode, palette, float(threshold))


def _settings(max_new_tokens: Any, top_k: Any, verify: Any) -> Settings:
    try:
        return Settings(max_new_tokens=int(max_new_tokens), top_k=int(top_k), verify=bool(verify))
    except (TypeError, ValueError, OverflowError) as ex:
        raise BadInput(f"max_new_tokens and top_k must be whole numbers, got {max_new_tokens!r}, {top_k!r}") from ex


def render_outputs(reply: ScoredReply | None, view: View) -> tuple[str, Any, Any, str]:
    """-> (token HTML, confidence figure, histogram, stats HTML); placeholders before any reply."""
    if reply is None:
        return legend_html(view.color_by, view.palette, view.threshold), None, None, ""
    return (
        reply_html(reply, view.color_by, view.palette, view.threshold),
        confidence_figure(reply.tokens, view.color_by, view.palette, view.threshold),
        histogram_figure(reply.tokens),
        stats_html(reply, view.threshold),
    )


EXPORT_ROOT = Path(tempfile.gettempdir()) / f"greedyscore-exports-{os.getpid()}"
EXPORT_TTL_S = 3600.0  # a download link lives this long; older exports are deleted


def export_files(reply: ScoredReply) -> tuple[str, str]:
    """Write the reply's tokens as JSON (the CLI's schema) and CSV; -> their paths.

    Each export gets its own folder under EXPORT_ROOT; folders older than EXPORT_TTL_S go, so
    a long-lived server does not fill its disk."""
    EXPORT_ROOT.mkdir(exist_ok=True)
    now = time.time()
    for old in EXPORT_ROOT.iterdir():
        if now - old.stat().st_mtime > EXPORT_TTL_S:
            shutil.rmtree(old, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(dir=EXPORT_ROOT))
    j, c = folder / "tokens.json", folder / "tokens.csv"
    j.write_text(json.dumps(reply.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
    c.write_text(tokens_csv(reply), encoding="utf-8")
    return str(j), str(c)


def _history_messages(history: list[dict] | None) -> list[Message]:
    """Chatbot history (messages format) -> Messages; anything malformed is a clear error."""
    if not history:
        return []
    clean = [{"role": h.get("role"), "content": _content_text(h.get("content"))} for h in history]
    return parse_messages(clean)


def _shown(history: list[dict]) -> list[dict]:
    """What the Chatbot displays: escaped copies (it renders HTML even without markdown)."""
    return [{"role": h["role"], "content": html.escape(str(h["content"]), quote=True)} for h in history]


def _parse_conversation(text: str) -> list[Message]:
    try:
        data = json.loads(text or "")
    except json.JSONDecodeError as ex:
        raise BadInput(f'the conversation must be JSON [{{"role", "content"}}, ...]: {ex.msg}') from ex
    return parse_messages(data)


def _api_outputs(reply: ScoredReply, view: View) -> tuple[str, Any, dict, str]:
    page, fig, _, stats = render_outputs(reply, view)
    return page, fig, reply.to_json(), stats


def _content_text(content: Any) -> Any:
    if isinstance(content, list):  # gradio may hand content as [{"type": "text", "text": ...}]
        return "".join(c.get("text", "") if isinstance(c, dict) else str(c) for c in content)
    return content


def run_streaming(service: Service, messages: list[Message], settings: Settings) -> Iterator[tuple[str, Any]]:
    """Run one chat turn in a worker thread; yield ("text", so_far) while it streams (and
    ("tick", None) while it waits), then ("reply", ScoredReply) or ("error", exception).
    Closing the iterator (Stop) cancels the generation, which then frees its batch slot."""
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()

    def work() -> None:
        try:
            reply = service.chat(messages, settings, on_text=lambda t: events.put(("text", t)), cancel=cancel)
            events.put(("reply", reply))
        except Exception as ex:  # noqa: BLE001 - handed to the UI as a message
            events.put(("error", ex))

    threading.Thread(target=work, daemon=True, name="greedyscore-chat").start()
    try:
        while True:
            try:
                kind, value = events.get(timeout=0.25)
            except queue.Empty:  # yield anyway: a Stop (closing this iterator) is seen within 0.25 s
                kind, value = "tick", None
            yield kind, value
            if kind in ("reply", "error"):
                return
    finally:
        cancel.set()


def _user_error(ex: Exception) -> gr.Error:
    if isinstance(ex, GreedyScoreError):
        return gr.Error(str(ex))
    if isinstance(ex, MemoryError) or "out of memory" in str(ex).lower():
        return gr.Error("the model ran out of memory on this request: try a shorter prompt or fewer new tokens")
    return gr.Error(f"the model failed on this request ({type(ex).__name__}); please try again")


def build_demo(service: Service, config: UIConfig = UIConfig()) -> gr.Blocks:
    """The whole app: Chat and Score-text tabs, plus API endpoints /chat and /score_text."""

    # --- callbacks (no model logic: Service and render do the work) -------------------------
    def chat_stream(message: str, history: list[dict], max_new: float, top_k: float, verify: bool,
                    color_by: str, palette: str, threshold: float):
        """UI turn: `history` is this session's raw conversation (gr.State); the Chatbot only
        ever gets escaped copies, so a message shows as text and runs nothing."""
        try:
            view = View.make(color_by, palette, threshold)
            settings = _settings(max_new, top_k, verify)
            messages = [*_history_messages(history), Message("user", message or "")]
            service.check_messages(messages)
            service.check_settings(settings)
        except GreedyScoreError as ex:
            raise gr.Error(str(ex)) from ex
        asked = [*(history or []), {"role": "user", "content": message}]
        skip = gr.skip()
        yield _shown(asked), "", skip, skip, skip, skip, skip, skip, skip, skip
        for kind, value in run_streaming(service, messages, settings):
            if kind == "tick":
                yield (skip,) * 10
            elif kind == "text":
                yield _shown([*asked, {"role": "assistant", "content": value}]), *(skip,) * 9
            elif kind == "error":
                raise _user_error(value)
            else:
                reply: ScoredReply = value
                final = [*asked, {"role": "assistant", "content": reply.text}]
                yield _shown(final), "", *render_outputs(reply, view), reply, *export_files(reply), final

    def rerender(reply: ScoredReply | None, color_by: str, palette: str, threshold: float):
        try:
            return render_outputs(reply, View.make(color_by, palette, threshold))
        except GreedyScoreError as ex:
            raise gr.Error(str(ex)) from ex

    def score(text: str, prompt: str, conversation: bool, top_k: float, color_by: str, palette: str,
              threshold: float) -> tuple[ScoredReply, View]:
        try:
            view = View.make(color_by, palette, threshold)
            settings = _settings(1, top_k, False)
            if conversation:
                return service.score_messages(_parse_conversation(text), settings), view
            return service.score_text(text or "", settings, prompt=(prompt or None)), view
        except Exception as ex:  # noqa: BLE001
            raise _user_error(ex) from ex

    def score_ui(text: str, prompt: str, conversation: bool, top_k: float, color_by: str, palette: str,
                 threshold: float):
        reply, view = score(text, prompt, conversation, top_k, color_by, palette, threshold)
        return (*render_outputs(reply, view), reply, *export_files(reply))

    def chat_api(message: str, history: Any, max_new: float, top_k: float, verify: bool,
                 color_by: str, palette: str, threshold: float):
        """API: one turn, not streamed -> (token HTML, figure, tokens JSON, stats HTML)."""
        try:
            view = View.make(color_by, palette, threshold)
            settings = _settings(max_new, top_k, verify)
            past = parse_messages(history) if history else []
            reply = service.chat([*past, Message("user", message or "")], settings)
        except Exception as ex:  # noqa: BLE001
            raise _user_error(ex) from ex
        return _api_outputs(reply, view)

    def score_api(text: str, prompt: str, top_k: float, color_by: str, palette: str, threshold: float):
        """API: teacher-forced scoring of text -> (token HTML, figure, tokens JSON, stats HTML)."""
        return _api_outputs(*score(text, prompt, False, top_k, color_by, palette, threshold))

    # --- layout -------------------------------------------------------------------------------
    model_line = f"**Model:** `{service.model_name}` · **backend:** `{service.backend}` · greedy decoding"
    blocks = dict(title="greedyscore: what the model was sure of", fill_width=True,
                  delete_cache=(int(EXPORT_TTL_S), int(EXPORT_TTL_S)))  # gradio's copies of the exports too
    with gr.Blocks(**blocks) as demo:
        gr.Markdown(
            "# greedyscore\nEvery token of a greedy reply with its **true model probability** "
            "(float32 softmax of the raw logits). Hover or focus a token for its alternatives.\n\n" + model_line,
            elem_id="gs-header",
        )
        with gr.Accordion("Settings", open=False):
            with gr.Row():
                max_new = gr.Slider(1, config.max_new_tokens_cap, value=config.max_new_tokens, step=1,
                                    label="max new tokens")
                top_k = gr.Slider(1, MAX_TOP_K, value=5, step=1, label="alternatives per token (top-k)")
                verify = gr.Checkbox(value=True, label="verify: rescore the reply and mark near ties")
            with gr.Row():
                color_by = gr.Radio(list(COLOR_MODES), value="probability", label="colour by")
                palette = gr.Radio(list(PALETTES), value=DEFAULT_PALETTE, label="palette")
                threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="underline below (threshold)")
        view_inputs = [color_by, palette, threshold]

        with gr.Tab("Chat"):
            chatbot = gr.Chatbot(label="Conversation", height=320, elem_id="gs-chatbot", render_markdown=False)
            history = gr.State([])  # this session's raw conversation
            with gr.Row():
                msg = gr.Textbox(placeholder="Ask something…", show_label=False, scale=8, elem_id="gs-msg",
                                 max_lines=8)
                send = gr.Button("Send", variant="primary", scale=1, elem_id="gs-send")
                stop = gr.Button("Stop", variant="stop", scale=1, elem_id="gs-stop")
                clear = gr.Button("Clear", scale=1)
            gr.Examples(EXAMPLES, inputs=[msg], label="Examples")
            chat_html = gr.HTML(legend_html("prob", DEFAULT_PALETTE, 0.5), label="Reply, token by token",
                                elem_id="gs-reply")
            with gr.Tabs():
                with gr.Tab("Confidence along the reply"):
                    chat_fig = gr.Plot(elem_id="gs-chart", show_label=False)
                with gr.Tab("Histogram"):
                    chat_hist = gr.Plot(elem_id="gs-hist", show_label=False)
            chat_stats = gr.HTML(elem_id="gs-stats")
            with gr.Row():
                chat_json = gr.File(label="tokens (JSON)", interactive=False, elem_id="gs-json")
                chat_csv = gr.File(label="tokens (CSV)", interactive=False)
            last_reply = gr.State(None)

        with gr.Tab("Score text"):
            score_in = gr.Textbox(lines=6, label="Text to score (teacher-forced)", elem_id="gs-score-text")
            with gr.Row():
                score_prompt = gr.Textbox(lines=1, label="…as the assistant's reply to (optional user message)",
                                          scale=4)
                score_conv = gr.Checkbox(label='the text is a conversation: JSON [{"role", "content"}, ...]',
                                         scale=2)
            score_btn = gr.Button("Score", variant="primary", elem_id="gs-score-btn")
            score_html = gr.HTML(elem_id="gs-score-reply")
            with gr.Tabs():
                with gr.Tab("Confidence along the text"):
                    score_fig = gr.Plot(show_label=False)
                with gr.Tab("Histogram"):
                    score_hist = gr.Plot(show_label=False)
            score_stats = gr.HTML()
            with gr.Row():
                score_json = gr.File(label="tokens (JSON)", interactive=False)
                score_csv = gr.File(label="tokens (CSV)", interactive=False)
            score_reply = gr.State(None)

        # API-only components: named endpoints for gradio_client
        with gr.Row(visible=False):
            # plain inputs, so out-of-range settings reach our validation and its messages
            api_msg, api_prompt, api_history = gr.Textbox(), gr.Textbox(), gr.JSON()
            api_max_new, api_top_k, api_verify = gr.Number(precision=0), gr.Number(precision=0), gr.Checkbox()
            api_color, api_palette, api_threshold = gr.Textbox(), gr.Textbox(), gr.Number()
            api_html, api_fig, api_tokens, api_stats = gr.HTML(), gr.Plot(), gr.JSON(), gr.HTML()
            api_btn, api_score_btn = gr.Button(), gr.Button()

        # --- events ---------------------------------------------------------------------------
        model = dict(concurrency_id=MODEL_EVENTS, concurrency_limit=config.concurrency)
        chat_outputs = [chatbot, msg, chat_html, chat_fig, chat_hist, chat_stats, last_reply, chat_json, chat_csv,
                        history]
        chat_inputs = [msg, history, max_new, top_k, verify, *view_inputs]
        ev_send = send.click(chat_stream, chat_inputs, chat_outputs, api_visibility="private", **model)
        ev_submit = msg.submit(chat_stream, chat_inputs, chat_outputs, api_visibility="private", **model)
        stop.click(None, cancels=[ev_send, ev_submit], api_visibility="private")
        clear.click(lambda: ([], [], None, *render_outputs(None, View())), None,
                    [chatbot, history, last_reply, chat_html, chat_fig, chat_hist, chat_stats],
                    api_visibility="private")
        for comp in view_inputs:
            comp.change(rerender, [last_reply, *view_inputs], [chat_html, chat_fig, chat_hist, chat_stats],
                        api_visibility="private")
            comp.change(rerender, [score_reply, *view_inputs], [score_html, score_fig, score_hist, score_stats],
                        api_visibility="private")
        score_outputs = [score_html, score_fig, score_hist, score_stats, score_reply, score_json, score_csv]
        score_btn.click(score_ui, [score_in, score_prompt, score_conv, top_k, *view_inputs], score_outputs,
                        api_visibility="private", **model)
        api_view = [api_color, api_palette, api_threshold]
        api_btn.click(chat_api, [api_msg, api_history, api_max_new, api_top_k, api_verify, *api_view],
                      [api_html, api_fig, api_tokens, api_stats], api_name="chat", **model)
        api_score_btn.click(score_api, [api_msg, api_prompt, api_top_k, *api_view],
                            [api_html, api_fig, api_tokens, api_stats], api_name="score_text", **model)
    return demo


CHATBOT_CSS = "#gs-chatbot .message-content, #gs-chatbot .message-content * { white-space: pre-wrap; }"


def launch_kwargs() -> dict[str, Any]:
    """What `launch()` needs besides host/port: in Gradio 6 the CSS is a launch argument."""
    return {"css": CSS + "\n" + CHATBOT_CSS}
