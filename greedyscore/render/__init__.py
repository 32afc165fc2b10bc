"""Pure rendering: ScoredToken/ScoredReply -> HTML, Plotly figures, ANSI text, CSV.

No model, torch or gradio here. Plotly is imported only when a figure is asked for, so the CLI's
terminal output does not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .colors import (
    DEFAULT_PALETTE,
    ENTROPY_CAP,
    MODES,
    PALETTES,
    color_for,
    measure_text,
    plotly_colorscale,
    text_color,
    token_value,
)
from .export import cell_text, parse_top, tokens_csv
from .html import CSS, CSS_PATH, legend_html, page_html, reply_html, stats_html, tokens_html
from .outputs import render_numbers, render_outputs
from .terminal import reply_ansi
from .text import pct, visible
from .view import COLOR_MODES, View

if TYPE_CHECKING:
    from .chart import confidence_figure, histogram_figure

__all__ = [
    "COLOR_MODES",
    "CSS",
    "CSS_PATH",
    "DEFAULT_PALETTE",
    "ENTROPY_CAP",
    "MODES",
    "PALETTES",
    "color_for",
    "confidence_figure",
    "histogram_figure",
    "legend_html",
    "measure_text",
    "page_html",
    "cell_text",
    "parse_top",
    "pct",
    "plotly_colorscale",
    "reply_ansi",
    "render_numbers",
    "render_outputs",
    "reply_html",
    "stats_html",
    "text_color",
    "token_value",
    "tokens_csv",
    "tokens_html",
    "View",
    "visible",
]

_LAZY = {"confidence_figure", "histogram_figure"}  # need plotly


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import chart

        return getattr(chart, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
