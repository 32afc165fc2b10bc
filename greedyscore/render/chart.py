"""Scored tokens -> Plotly figures: confidence per token (with entropy) and a probability histogram.

One trace per series, built from arrays, so 2,000 tokens cost one Bar and one Scatter, not 2,000
traces. Plotly renders hover and tick text as a subset of HTML, so token texts are escaped here
too (Plotly decodes the entities back for display).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import plotly.graph_objects as go

from ..types import ScoredToken
from .colors import (
    DEFAULT_PALETTE,
    ENTROPY_CAP,
    MODE_LABELS,
    check_mode,
    color_for,
    plotly_colorscale,
    threshold_text,
    ticks,
    token_value,
)
from .text import num, pct, visible

MAX_TICK_LABELS = 60  # more token labels than this overlap: label every n-th bar
TICK_CHARS = 10  # token labels on the x axis are cut to this many characters
ENTROPY_COLOR = "#d6336c"  # not in any palette; the line is also dotted
Y_TITLES = {"prob": "probability", "margin": "margin (p1 \u2212 p2)", "entropy": "confidence (1 \u2212 H / ln 20)"}


def _esc(s: str) -> str:
    return html.escape(s, quote=True)


def tick_label(t: ScoredToken, limit: int = TICK_CHARS) -> str:
    """A short, visible, escaped x-axis label. Example: tick_label(<" Paris">) -> "␣Paris" """
    shown = visible(t.text, spaces=True) if t.text else "\u00b7"
    if len(shown) > limit:
        shown = shown[: limit - 1] + "\u2026"
    return _esc(shown)


def _alts_text(t: ScoredToken) -> str:
    rows = [
        f"{'\u25b8 ' if a.id == t.id else '\u2003'}{_esc(visible(a.text, spaces=True)) or '\u2205'}  {pct(a.prob)}"
        for a in t.top
    ]
    return "<br>".join(rows)


def _hover_rows(tokens: Sequence[ScoredToken]) -> list[list[str]]:
    out = []
    for t in tokens:
        shown = _esc(visible(t.text, spaces=True)) if t.text else "(partial character)"
        tie = (
            f"<br>near tie: rescored {pct(t.rescored_prob)}" if t.rescored_prob is not None and t.near_tie else ""
        )
        out.append([shown, pct(t.prob), num(t.entropy, 3), f"{pct(t.margin)}", _alts_text(t) + tie])
    return out


def _tick_values(n: int) -> list[int]:
    step = max(1, math.ceil(n / MAX_TICK_LABELS))
    return list(range(0, n, step))


def confidence_figure(
    tokens: Sequence[ScoredToken], color_by: str = "prob", palette: str = DEFAULT_PALETTE, threshold: float = 0.5
) -> go.Figure:
    """One bar per token (height and colour = the mode's confidence, as in the HTML), the entropy
    as a dotted line on a second y axis, the threshold as a dashed line, top-k on hover.

    Example: len(confidence_figure(tokens).data[0].y) == len(tokens)
    """
    check_mode(color_by)
    n = len(tokens)
    x = list(range(n))
    values = [token_value(t, color_by) for t in tokens]
    tv = _tick_values(n)
    bar = go.Bar(
        x=x,
        y=values,
        name=Y_TITLES[color_by],
        marker=dict(
            color=values,
            colorscale=plotly_colorscale(palette),
            cmin=0.0,
            cmax=1.0,
            line=dict(width=0),
            colorbar=dict(
                title=dict(text=MODE_LABELS[color_by].split(":")[0], side="right"),
                tickvals=[p for p, _ in ticks(color_by)],
                ticktext=[_esc(label) for _, label in ticks(color_by)],
                x=1.1,
                len=0.9,
            ),
        ),
        customdata=_hover_rows(tokens),
        hovertemplate=(
            "<b>#%{x}</b> %{customdata[0]}<br>probability %{customdata[1]} \u00b7 margin %{customdata[3]}"
            " \u00b7 entropy %{customdata[2]} nats<br>%{customdata[4]}<extra></extra>"
        ),
    )
    line = go.Scatter(
        x=x,
        y=[t.entropy for t in tokens],
        name="entropy (nats)",
        mode="lines",
        yaxis="y2",
        line=dict(color=ENTROPY_COLOR, width=1.5, dash="dot"),
        hoverinfo="skip",
    )
    fig = go.Figure(data=[bar, line])
    ent_max = max([t.entropy for t in tokens] + [ENTROPY_CAP])
    fig.update_layout(
        title=dict(text=f"Confidence per token ({_esc(Y_TITLES[color_by])})"),
        xaxis=dict(
            title=dict(text="token"),
            tickmode="array",
            tickvals=tv,
            ticktext=[tick_label(tokens[i]) for i in tv],
            tickangle=-60 if n > 1 else 0,
            range=[-0.5, max(n, 1) - 0.5],
        ),
        yaxis=dict(title=dict(text=Y_TITLES[color_by]), range=[0, 1.05], tickformat=".0%" if color_by != "entropy" else None),
        yaxis2=dict(title=dict(text="entropy (nats)"), overlaying="y", side="right", range=[0, ent_max * 1.05], showgrid=False),
        bargap=0.08 if n <= 200 else 0,
        hovermode="closest",
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
        margin=dict(l=60, r=120, t=70, b=90),
        template="plotly_white",
        shapes=[
            dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=threshold, y1=threshold,
                 line=dict(color="#212529", width=1.5, dash="dash"), name="threshold"),
        ],  # fmt: skip
        annotations=[
            dict(xref="paper", x=0, yref="y", y=threshold, text=_esc(f"threshold: {threshold_text(color_by, threshold)}"),
                 showarrow=False, xanchor="left", yanchor="bottom", font=dict(size=11)),
        ],  # fmt: skip
    )
    if n == 0:
        fig.add_annotation(text="no tokens", xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False)
    return fig


def histogram_counts(probs: Sequence[float], bins: int = 20) -> list[int]:
    """Counts over equal bins of [0, 1]; p = 1 falls in the last bin.

    Example: histogram_counts([0.0, 0.5, 1.0], bins=2) -> [1, 2]
    """
    counts = [0] * bins
    for p in probs:
        p = 0.0 if math.isnan(p) else min(1.0, max(0.0, p))
        counts[min(int(p * bins), bins - 1)] += 1
    return counts


def histogram_figure(
    tokens: Sequence[ScoredToken], palette: str = DEFAULT_PALETTE, threshold: float | None = None, bins: int = 20
) -> go.Figure:
    """How many tokens fall in each probability bin, bars coloured by the same scale.

    Example: sum(histogram_figure(tokens).data[0].y) == len(tokens)
    """
    counts = histogram_counts([t.prob for t in tokens], bins)
    width = 1.0 / bins
    centers = [(i + 0.5) * width for i in range(bins)]
    labels = [f"{i * width * 100:.0f}\u2013{(i + 1) * width * 100:.0f}%" for i in range(bins)]
    fig = go.Figure(
        go.Bar(
            x=centers,
            y=counts,
            width=width * 0.95,
            marker=dict(color=[color_for(c, palette) for c in centers], line=dict(width=0)),
            customdata=labels,
            hovertemplate="probability %{customdata}: %{y} tokens<extra></extra>",
            name="tokens",
        )
    )
    fig.update_layout(
        title=dict(text=f"Token probabilities ({len(tokens)} tokens)"),
        xaxis=dict(title=dict(text="probability of the chosen token"), range=[0, 1], tickformat=".0%"),
        yaxis=dict(title=dict(text="tokens")),
        bargap=0,
        margin=dict(l=60, r=30, t=60, b=60),
        template="plotly_white",
        showlegend=False,
    )
    if threshold is not None:
        fig.add_shape(type="line", xref="x", x0=threshold, x1=threshold, yref="paper", y0=0, y1=1,
                      line=dict(color="#212529", width=1.5, dash="dash"), name="threshold")  # fmt: skip
    return fig
