"""Scored tokens -> Plotly figures: confidence per token (with entropy), a histogram of it, and
two forked paths on one axis.

One trace per series, built from arrays, so 2,000 tokens cost one Bar and one Scatter, not 2,000
traces. Plotly renders hover and tick text as a subset of HTML, so token texts are escaped here
too: `&`, `<`, `>` only, the entities Plotly decodes back for display (it shows `&quot;` raw).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import plotly.graph_objects as go

from ..types import ScoredToken
from .colors import (
    ENTROPY_CAP,
    MODE_SHORT,
    check_mode,
    color_for,
    plotly_colorscale,
    ticks,
    token_value,
    value_text,
)
from .text import entropy_text, pct, plotly_text, visible
from .view import View

MAX_TICK_LABELS = 60  # more token labels than this overlap: label every n-th bar
TICK_CHARS = 10  # token labels on the x axis are cut to this many characters
ENTROPY_COLOR = "#d6336c"  # not in any palette; the line is also dotted
CHOSEN_MARK, OTHER_MARK = "\u25b8 ", "\u2003"  # hover rows: ▸ before the chosen token, an em space before others
# white background set directly: a named template is deep-copied on every figure, which is slow
PLAIN_LAYOUT: dict = dict(template="none", paper_bgcolor="white", plot_bgcolor="white", font=dict(color="#212529"))
AXIS_STYLE: dict = dict(gridcolor="#e9ecef", zerolinecolor="#ced4da", linecolor="#adb5bd")
Y_TITLES = {"prob": "probability", "margin": "margin (p1 \u2212 p2)", "entropy": "confidence (1 \u2212 H / ln 20)"}


@lru_cache(maxsize=1 << 16)
def token_label(text: str, empty: str = "\u2205") -> str:
    """Escaped one-line form of a token text for Plotly; cached because top-k texts repeat."""
    return plotly_text(visible(text, spaces=True)) if text else empty


def tick_label(t: ScoredToken, limit: int = TICK_CHARS) -> str:
    """A short, visible, escaped x-axis label. Example: tick_label(<" Paris">) -> "␣Paris" """
    shown = visible(t.text, spaces=True) if t.text else "\u00b7"
    if len(shown) > limit:
        shown = shown[: limit - 1] + "\u2026"
    return plotly_text(shown)


def _alts_text(t: ScoredToken) -> str:
    rows = [f"{CHOSEN_MARK if a.id == t.id else OTHER_MARK}{token_label(a.text)}  {pct(a.prob)}" for a in t.top]
    if t.top and all(a.id != t.id for a in t.top):
        rows.append(f"{CHOSEN_MARK}{token_label(t.text)}  {pct(t.prob)} (rank {t.rank})")
    return "<br>".join(rows)


def _hover_rows(tokens: Sequence[ScoredToken]) -> np.ndarray:
    out = []
    for i, t in enumerate(tokens):
        shown = f"#{i} " + token_label(t.text, "(partial character)")
        tie = f"<br>near tie: rescored {pct(t.rescored_prob)}" if t.rescored_prob is not None and t.near_tie else ""
        out.append((shown, pct(t.prob), entropy_text(t.entropy, t.entropy_max), pct(t.margin), _alts_text(t) + tie))
    rows = np.empty((len(out), 5), dtype=object)  # [n, 5]: text, prob, entropy, margin, top-k
    if out:
        rows[:] = out
    return rows


def confidence_figure(tokens: Sequence[ScoredToken], view: View = View()) -> go.Figure:
    """One bar per token (height and colour = the mode's confidence, as in the HTML), the entropy
    as a dotted line on a second y axis, the threshold as a dashed line, top-k on hover.

    Example: len(confidence_figure(tokens).data[0].y) == len(tokens)
    """
    check_mode(view.color_by)
    # numpy arrays: Plotly validates them in one step instead of element by element
    x = np.arange(len(tokens))
    values = np.array([token_value(t, view.color_by) for t in tokens], dtype=float)  # [n]
    entropy_traces, ent_max = _entropy_traces(tokens, x)
    layout = _confidence_layout(tokens, view, ent_max)
    return go.Figure(data=[_confidence_bar(tokens, x, values, view), *entropy_traces], layout=layout)


def _confidence_bar(tokens: Sequence[ScoredToken], x: np.ndarray, values: np.ndarray, view: View) -> go.Bar:
    """The bars, coloured on the palette's scale with a colorbar in the mode's units, top-k on hover."""
    mode = view.color_by
    return go.Bar(
        x=x,
        y=values,
        name=Y_TITLES[mode],
        marker=dict(
            color=values,
            colorscale=plotly_colorscale(view.palette),
            cmin=0.0,
            cmax=1.0,
            line=dict(width=0),
            colorbar=dict(
                title=dict(text=MODE_SHORT[mode], side="right"),
                tickvals=[p for p, _ in ticks(mode)],
                ticktext=[plotly_text(label) for _, label in ticks(mode)],
                x=1.1,
                len=0.9,
            ),
        ),
        customdata=_hover_rows(tokens),
        hovertemplate=(
            "<b>%{customdata[0]}</b><br>probability %{customdata[1]} \u00b7 margin %{customdata[3]}"
            " \u00b7 entropy %{customdata[2]}<br>%{customdata[4]}<extra></extra>"
        ),
    )


def _entropy_traces(tokens: Sequence[ScoredToken], x: np.ndarray) -> tuple[list[go.Scatter], float]:
    """The entropy line, and where a server gave only its top-k the band the entropy lies in;
    with the top of the entropy axis."""
    entropy = np.array([t.entropy for t in tokens], dtype=float)  # [n]
    line = go.Scatter(
        x=x,
        y=entropy,
        name="entropy (nats)",
        mode="lines",
        yaxis="y2",
        line=dict(color=ENTROPY_COLOR, width=1.5, dash="dot"),
        hoverinfo="skip",
    )
    traces = [line]
    upper = np.array([t.entropy if t.entropy_max is None else t.entropy_max for t in tokens], dtype=float)  # [n]
    if bool((upper > entropy).any()):  # a server's top-k only: the band the entropy lies in
        line.name = "entropy, lower bound (nats)"
        traces.append(go.Scatter(x=x, y=upper, name="entropy, upper bound (top-k only)", mode="lines", yaxis="y2",
                                 fill="tonexty", fillcolor="rgba(120,120,120,0.15)",
                                 line=dict(color=ENTROPY_COLOR, width=1, dash="dash"), hoverinfo="skip"))
    return traces, max(float(upper.max(initial=0.0)), ENTROPY_CAP)


def _confidence_layout(tokens: Sequence[ScoredToken], view: View, ent_max: float) -> dict:
    """Axes (token labels thinned out on long replies), the threshold line and its caption."""
    n, mode = len(tokens), view.color_by
    tv = list(range(0, n, max(1, math.ceil(n / MAX_TICK_LABELS))))  # every n-th bar labelled
    caption = f"threshold: {view.threshold_text()}"
    layout = dict(
        title=dict(text=f"Confidence per token ({plotly_text(Y_TITLES[mode])})"),
        xaxis=dict(
            AXIS_STYLE,
            title=dict(text="token"),
            tickmode="array",
            tickvals=tv,
            ticktext=[tick_label(tokens[i]) for i in tv],
            tickangle=-60 if n > 1 else 0,
            range=[-0.5, max(n, 1) - 0.5],
        ),
        yaxis=dict(AXIS_STYLE, title=dict(text=Y_TITLES[mode]), range=[0, 1.05],
                   tickformat=None if mode == "entropy" else ".0%"),
        yaxis2=dict(AXIS_STYLE, title=dict(text="entropy (nats)"), overlaying="y", side="right",
                    range=[0, ent_max * 1.05], showgrid=False, tickformat=".1f"),
        bargap=0.08 if n <= 200 else 0,
        hovermode="closest",
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
        margin=dict(l=60, r=120, t=70, b=90),
        shapes=[threshold_line(view.threshold, horizontal=True)],
        annotations=[
            dict(xref="paper", x=0, yref="y", y=view.threshold, text=plotly_text(caption), showarrow=False,
                 xanchor="left", yanchor="bottom", font=dict(size=11)),
        ],
        **PLAIN_LAYOUT,
    )  # fmt: skip
    if n == 0:
        layout["annotations"].append(dict(text="no tokens", xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False))
    return layout


def threshold_line(threshold: float, horizontal: bool) -> dict:
    """A dashed line shape across the plot at the threshold (named "threshold" for tests/tools)."""
    if horizontal:
        pos = dict(xref="paper", x0=0, x1=1, yref="y", y0=threshold, y1=threshold)
    else:
        pos = dict(xref="x", x0=threshold, x1=threshold, yref="paper", y0=0, y1=1)
    return dict(type="line", name="threshold", line=dict(color="#212529", width=1.5, dash="dash"), **pos)


def histogram_counts(probs: Sequence[float], bins: int = 20) -> list[int]:
    """Counts over equal bins of [0, 1]; p = 1 falls in the last bin.

    Example: histogram_counts([0.0, 0.5, 1.0], bins=2) -> [1, 2]
    """
    counts = [0] * bins
    for p in probs:
        p = 0.0 if math.isnan(p) else min(1.0, max(0.0, p))
        counts[min(int(p * bins), bins - 1)] += 1
    return counts


def histogram_figure(tokens: Sequence[ScoredToken], view: View = View(), bins: int = 20) -> go.Figure:
    """How many tokens fall in each bin of the colour mode's confidence (as the tokens and the
    chart are coloured), bars in the same palette, ticks in the mode's own units.

    Example: sum(histogram_figure(tokens, View("margin")).data[0].y) == len(tokens)
    """
    color_by = check_mode(view.color_by)
    counts = histogram_counts([token_value(t, color_by) for t in tokens], bins)
    width = 1.0 / bins
    centers = [(i + 0.5) * width for i in range(bins)]
    edges = [value_text(color_by, i * width) for i in range(bins + 1)]
    labels = [f"{edges[i]}\u2013{edges[i + 1]}" for i in range(bins)]
    bar = go.Bar(
        x=centers,
        y=counts,
        width=width * 0.95,
        marker=dict(color=[color_for(c, view.palette) for c in centers], line=dict(width=0)),
        customdata=labels,
        hovertemplate=f"{MODE_SHORT[color_by]} %{{customdata}}: %{{y}} tokens<extra></extra>",
        name="tokens",
    )
    layout = dict(
        title=dict(text=f"Tokens by {plotly_text(Y_TITLES[color_by])} ({len(tokens)} tokens)"),
        xaxis=dict(AXIS_STYLE, title=dict(text=plotly_text(Y_TITLES[color_by])), range=[0, 1], tickmode="array",
                   tickvals=[p for p, _ in ticks(color_by)],
                   ticktext=[plotly_text(label) for _, label in ticks(color_by)]),
        yaxis=dict(AXIS_STYLE, title=dict(text="tokens"), dtick=max(1, math.ceil(max(counts) / 8))),
        bargap=0,
        margin=dict(l=60, r=30, t=60, b=60),
        showlegend=False,
        shapes=[threshold_line(view.threshold, horizontal=False)],
        **PLAIN_LAYOUT,
    )
    return go.Figure(data=[bar], layout=layout)


def fork_figure(
    parent: Sequence[ScoredToken], fork: Sequence[ScoredToken], forked_at: int, rejoin: tuple[int, int] | None,
    color_by: str = "prob", names: tuple[str, str] = ("the reply", "the fork"),
) -> go.Figure:
    """Both roads on one x axis (token position from the reply's start): each token's confidence
    in the colour mode, a dashed line where they part, a dotted one where they meet again.

    Example: len(fork_figure(a, b, 3, None).data) == 2
    """
    check_mode(color_by)
    traces = []
    for tokens, name, color, dash in ((parent, names[0], "#495057", "solid"), (fork, names[1], "#e8590c", "dot")):
        traces.append(go.Scatter(
            x=np.arange(len(tokens)), y=np.array([token_value(t, color_by) for t in tokens], dtype=float),
            name=plotly_text(name), mode="lines+markers", line=dict(color=color, width=1.5, dash=dash),
            marker=dict(size=5), customdata=_hover_rows(tokens),
            hovertemplate="<b>%{customdata[0]}</b><br>probability %{customdata[1]} \u00b7 margin %{customdata[3]}"
                          f"<extra>{plotly_text(name)}</extra>",
        ))
    shapes = [dict(type="line", name="forked", xref="x", x0=forked_at, x1=forked_at, yref="paper", y0=0, y1=1,
                   line=dict(color="#e8590c", width=1.5, dash="dash"))]
    if rejoin is not None:
        shapes.append(dict(type="line", name="rejoined", xref="x", x0=rejoin[0], x1=rejoin[0], yref="paper", y0=0,
                           y1=1, line=dict(color="#2b8a3e", width=1.5, dash="dot")))
    layout = dict(
        title=dict(text=f"Two roads from token {forked_at} ({plotly_text(Y_TITLES[color_by])})"),
        xaxis=dict(AXIS_STYLE, title=dict(text="token position in the reply")),
        yaxis=dict(AXIS_STYLE, title=dict(text=Y_TITLES[color_by]), range=[0, 1.05],
                   tickformat=None if color_by == "entropy" else ".0%"),
        hovermode="closest", margin=dict(l=60, r=30, t=60, b=50), shapes=shapes,
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0), **PLAIN_LAYOUT,
    )
    return go.Figure(data=traces, layout=layout)
