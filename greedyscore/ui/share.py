"""Share links in the Gradio app (layout and wiring): a Share button stores a result and shows its
link; `/?r=ID` shows it read-only at the top of the page, to continue or re-run here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..errors import BadInput, GreedyScoreError
from ..render import View
from ..render.explore import EXPLORE_JS
from ..render.share_page import not_shared_html, reproduction_html, share_link_html, shared_view
from ..service import Service
from ..sharing.document import SharedItem
from ..sharing.store import NotShared, ShareStore
from . import actions
from .parts import PRIVATE, UIConfig, shown_as_gr_errors


def root_url(request: gr.Request | None) -> str:
    """The app's public address as the visitor reached it (a proxy's X-Forwarded-* headers honoured)."""
    if request is None:
        return ""
    try:
        from gradio.route_utils import get_root_url

        raw = request.request
        return get_root_url(raw, raw.url.path, raw.scope.get("root_path") or None)
    except Exception:  # noqa: BLE001 - a request without a URL (a test double): the Host header
        host = request.headers.get("host", "")
        return f"http://{host}" if host else ""


@dataclass
class Sharing:
    """The store (None: sharing is off on this server) and the Service whose model re-runs."""

    store: ShareStore | None
    service: Service

    def put(self, item: SharedItem, request: gr.Request | None) -> tuple[str, str]:
        """Store the item -> (id, link); rated per client address (an API call is a new Gradio session)."""
        if self.store is None:
            raise BadInput("sharing is off on this server (started with --no-share)")
        client = getattr(getattr(request, "client", None), "host", None) or ""
        item_id = self.store.put(item.to_json(), client)
        return item_id, f"{root_url(request)}/?r={item_id}"

    def get(self, item_id: Any) -> SharedItem:
        if self.store is None:
            raise BadInput("sharing is off on this server, so its links cannot be opened here")
        return SharedItem.from_json(self.store.get(item_id))

    def view(self, item_id: Any, view: View) -> tuple[SharedItem, tuple[str, str, Any, str]]:
        """The item and its page parts; one that passes the checks yet cannot be drawn is "damaged"."""
        item = self.get(item_id)
        try:
            return item, shared_view(item, view)
        except Exception as ex:  # noqa: BLE001 - stored data from anywhere: the page says so
            raise NotShared("that shared result is damaged and cannot be shown") from ex

    def expires(self, created: float) -> float | None:
        ttl = self.store.limits.ttl_s if self.store is not None else None
        return created + ttl if ttl else None

    def link(self, item: SharedItem, request: gr.Request | None) -> str:
        """Store the item -> its link's HTML, for under a Share button."""
        return share_link_html(self.put(item, request)[1], self.expires(item.created))

    def rerun(self, item: SharedItem) -> str:
        """Run the stored result again on this server's model -> the report's HTML."""
        return reproduction_html(actions.reproduce(self.service, item), item.model, actions.identity(self.service))


class SharedPanel:
    """The shared result at the top of the page, hidden until a link is opened."""

    def __init__(self, sharing: Sharing) -> None:
        self.sharing = sharing
        with gr.Column(visible=False, elem_id="gs-shared") as self.column:
            self.head = gr.HTML(elem_id="gs-shared-head")
            self.body = gr.HTML(elem_id="gs-shared-reply", js_on_load=EXPLORE_JS)
            with gr.Row():
                self.proceed = gr.Button("Continue this conversation", elem_id="gs-continue", scale=1)
                self.rerun = gr.Button("Re-run here", elem_id="gs-rerun-btn", variant="primary", scale=1)
            self.report = gr.HTML(elem_id="gs-rerun")
            self.fig = gr.Plot(elem_id="gs-shared-chart", show_label=False)
            self.stats = gr.HTML(elem_id="gs-shared-stats")
        self.item = gr.State(None)

    def wire(self, demo: gr.Blocks, view_inputs: list, config: UIConfig) -> None:
        """Open `?r=ID` on page load; redraw with the view; Re-run (a model event)."""
        cheap = dict(**PRIVATE, concurrency_limit=None)  # no model: every page load at once
        demo.load(self.open, view_inputs, [self.column, self.head, self.body, self.fig, self.stats, self.item,
                                           self.proceed, self.rerun], **cheap)
        for comp in view_inputs:
            comp.change(self.redraw, [self.item, *view_inputs], [self.body, self.fig, self.stats], **cheap)
        self.rerun.click(self.run_again, [self.item], [self.report], **config.model, **PRIVATE)

    def open(self, color_by: str, palette: str, threshold: float, request: gr.Request) -> dict:
        """The page's `?r=ID`, if any."""
        item_id = request.query_params.get("r") if request is not None else None
        if not item_id:
            return {self.column: gr.Column(visible=False), self.item: None}
        try:
            item, (head, body, fig, stats) = self.sharing.view(item_id, View.make(color_by, palette, threshold))
        except GreedyScoreError as ex:  # unknown, malformed, expired, evicted, damaged: a message on the page
            hidden = gr.Button(visible=False)
            return {self.column: gr.Column(visible=True), self.head: not_shared_html(str(ex)), self.body: "",
                    self.fig: None, self.stats: "", self.item: None, self.proceed: hidden, self.rerun: hidden}
        label = "Continue this conversation" if item.kind == "chat" else "Open in Score text"
        return {self.column: gr.Column(visible=True), self.head: head, self.body: body, self.fig: fig,
                self.stats: stats, self.item: item, self.proceed: gr.Button(label, visible=True),
                self.rerun: gr.Button(visible=True)}

    def redraw(self, item: SharedItem | None, color_by: str, palette: str, threshold: float) -> Any:
        if item is None:
            return gr.skip()
        with shown_as_gr_errors():
            _, body, fig, stats = shared_view(item, View.make(color_by, palette, threshold))
            return {self.body: body, self.fig: fig, self.stats: stats}

    def run_again(self, item: SharedItem | None) -> Iterator[dict]:
        with shown_as_gr_errors():
            if item is None:
                raise BadInput("open a share link first")
            yield {self.report: '<div class="gs-repro" role="status">Re-running on this server’s model…</div>'}
            yield {self.report: self.sharing.rerun(item)}

