"""Pure rendering: ScoredToken/ScoredReply -> HTML, Plotly figures, ANSI text, CSV.

No model, torch or gradio here. Plotly is imported only by render.chart (figures), so the CLI's
terminal output does not pay for it.
"""

from __future__ import annotations

from .colors import DEFAULT_PALETTE, PALETTES, color_for, text_color, token_value
from .export import cell_text, parse_top, tokens_csv
from .html import CSS, legend_html, page_html, reply_html, stats_html, tokens_html
from .map import map_html
from .outputs import render_numbers, render_outputs
from .terminal import reply_ansi
from .view import COLOR_MODES, View

__all__ = [
    "COLOR_MODES",
    "CSS",
    "DEFAULT_PALETTE",
    "PALETTES",
    "color_for",
    "legend_html",
    "map_html",
    "page_html",
    "cell_text",
    "parse_top",
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
]
