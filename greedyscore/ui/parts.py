"""What the tabs share: the app's settings, the settings panel, a reply's numbers panel, and how
errors reach the visitor."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..errors import GreedyScoreError
from ..render import COLOR_MODES, DEFAULT_PALETTE, PALETTES, View, render_numbers
from ..render.share_page import COPY_JS
from ..types import MAX_TOP_K, ScoredReply

MODEL_EVENTS = "model"  # one concurrency group shared by every event that runs the model
DEFAULT_VIEW = View()
PRIVATE = dict(api_visibility="private")
NOW = dict(queue=False, api_visibility="private")  # no model, no queue


@dataclass(frozen=True)
class UIConfig:
    max_new_tokens: int = 128  # default of the slider
    max_new_tokens_cap: int = 1024  # the slider's top
    concurrency: int = 1  # model events running at once (the Service batches them)

    @property
    def model(self) -> dict[str, Any]:
        """Listener arguments of an event that runs the model."""
        return dict(concurrency_id=MODEL_EVENTS, concurrency_limit=self.concurrency)


@contextmanager
def shown_as_gr_errors() -> Iterator[None]:
    """Domain errors (bad input, busy, model failure) reach the visitor as their message."""
    try:
        yield
    except GreedyScoreError as ex:
        raise gr.Error(str(ex)) from ex


class Controls:
    """The shared settings panel: generation settings, then how replies are drawn."""

    def __init__(self, config: UIConfig) -> None:
        with gr.Accordion("Settings", open=False):
            with gr.Row():
                self.max_new = gr.Slider(1, config.max_new_tokens_cap, value=config.max_new_tokens, step=1,
                                         label="max new tokens")
                self.top_k = gr.Slider(1, MAX_TOP_K, value=5, step=1, label="alternatives per token (top-k)")
                self.verify = gr.Checkbox(value=True, label="verify: rescore the reply and mark near ties")
            with gr.Row():
                self.color_by = gr.Radio(list(COLOR_MODES), value="probability", label="colour by",
                                         elem_id="gs-color-by")
                self.palette = gr.Radio(list(PALETTES), value=DEFAULT_PALETTE, label="palette")
                self.threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="underline below (threshold)")
        self.view = [self.color_by, self.palette, self.threshold]


class Numbers:
    """Chart and histogram tabs, stats, downloads: the numbers of one reply."""

    def __init__(self, noun: str, elem: str, json_label: str = "tokens (JSON)") -> None:
        with gr.Tabs():
            with gr.Tab(f"Confidence along the {noun}"):
                self.fig = gr.Plot(elem_id=f"gs-{elem}-chart", show_label=False)
            with gr.Tab("Histogram"):
                self.hist = gr.Plot(elem_id=f"gs-{elem}-hist", show_label=False)
        self.stats = gr.HTML(elem_id=f"gs-{elem}-stats")
        with gr.Row():
            self.json_file = gr.File(label=json_label, interactive=False, elem_id=f"gs-{elem}-json")
            self.csv_file = gr.File(label="tokens (CSV)", interactive=False, elem_id=f"gs-{elem}-csv")
        self.outputs = [self.fig, self.hist, self.stats, self.json_file, self.csv_file]

    def show(self, reply: ScoredReply | None, view: View, files: tuple[Any, Any] | None = None) -> dict:
        """The reply's chart, histogram and stats; the download files too when given."""
        shown = dict(zip(self.outputs, render_numbers(reply, view)))
        return shown if files is None else {**shown, self.json_file: files[0], self.csv_file: files[1]}


def link_box() -> gr.HTML:
    """Where a Share button's link appears."""
    return gr.HTML("", elem_id="gs-share-link", js_on_load=COPY_JS)
