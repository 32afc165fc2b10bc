"""How a visitor asked to see a reply (colour mode, palette, threshold), and everything drawn from it.

`View.make` validates loosely typed UI/API values; `render_outputs` gives the four things the
UI shows for a reply, all following the same view: token HTML, confidence chart, histogram, stats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import BadInput
from ..types import ScoredReply
from .colors import DEFAULT_PALETTE, check_mode, check_palette, legend_html
from .html import reply_html, stats_html

COLOR_MODES = {"probability": "prob", "margin (p1 − p2)": "margin", "entropy": "entropy"}  # UI label -> mode


@dataclass(frozen=True)
class View:
    color_by: str = "prob"
    palette: str = DEFAULT_PALETTE
    threshold: float = 0.5

    @staticmethod
    def make(color_by: Any, palette: Any, threshold: Any) -> View:
        """Example: View.make("margin (p1 − p2)", "viridis", 0.3) -> View("margin", "viridis", 0.3)"""
        mode = check_mode(COLOR_MODES.get(color_by, color_by) if isinstance(color_by, str) else repr(color_by))
        check_palette(palette if isinstance(palette, str) else repr(palette))
        try:
            value = float(threshold)
        except (TypeError, ValueError):
            value = math.nan
        if isinstance(threshold, bool) or not 0.0 <= value <= 1.0:
            raise BadInput(f"threshold must be a number between 0 and 1, got {threshold!r}")
        return View(mode, palette, value)


def render_outputs(reply: ScoredReply | None, view: View) -> tuple[str, Any, Any, str]:
    """-> (token HTML with legend, confidence figure, histogram, stats HTML); the legend alone before any reply."""
    if reply is None:
        return legend_html(view.color_by, view.palette, view.threshold), None, None, ""
    return (reply_html(reply, view.color_by, view.palette, view.threshold), *render_numbers(reply, view))


def render_numbers(reply: ScoredReply | None, view: View) -> tuple[Any, Any, str]:
    """-> (confidence figure, histogram, stats HTML) of a reply; empty before any reply."""
    from .chart import confidence_figure, histogram_figure

    if reply is None:
        return None, None, ""
    return (
        confidence_figure(reply.tokens, view.color_by, view.palette, view.threshold),
        histogram_figure(reply.tokens, view.color_by, view.palette, view.threshold),
        stats_html(reply, view.color_by, view.palette, view.threshold),
    )
