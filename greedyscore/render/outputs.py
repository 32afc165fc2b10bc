"""A reply as the UI shows it, everything under one `View`: token HTML, confidence chart,
histogram, stats."""

from __future__ import annotations

from typing import Any

from ..types import ScoredReply
from .html import legend_html, reply_html, stats_html
from .view import View


def render_outputs(reply: ScoredReply | None, view: View) -> tuple[str, Any, Any, str]:
    """-> (token HTML with legend, confidence figure, histogram, stats HTML); the legend alone before any reply."""
    if reply is None:
        return legend_html(view), None, None, ""
    return (reply_html(reply, view), *render_numbers(reply, view))


def render_numbers(reply: ScoredReply | None, view: View) -> tuple[Any, Any, str]:
    """-> (confidence figure, histogram, stats HTML) of a reply; empty before any reply."""
    from .chart import confidence_figure, histogram_figure

    if reply is None:
        return None, None, ""
    return confidence_figure(reply.tokens, view), histogram_figure(reply.tokens, view), stats_html(reply, view)
