"""A Calibration -> a reliability diagram (Plotly) and a one-paragraph summary (escaped HTML)."""

from __future__ import annotations

import html

import plotly.graph_objects as go

from ..calibration import MIN_POSITIONS
from ..types import Calibration
from .chart import AXIS_STYLE, PLAIN_LAYOUT

BAR_COLOR = "#4c78a8"
GAP_COLOR = "#e45756"


def reliability_figure(cal: Calibration) -> go.Figure:
    """Accuracy per bin of top-1 probability (bars, n on each), the bins' mean confidence (marks)
    and the diagonal a calibrated model would sit on."""
    used = [b for b in cal.bins if b.n]
    centres = [(b.lo + b.hi) / 2 for b in used]
    width = cal.bins[0].hi - cal.bins[0].lo if cal.bins else 0.1
    bars = go.Bar(x=centres, y=[b.accuracy for b in used], width=[width * 0.9] * len(used),
                  name="accuracy (top-1 was the real token)", marker=dict(color=BAR_COLOR),
                  text=[f"n={b.n}" for b in used], textposition="outside",
                  customdata=[[b.lo, b.hi, b.n, b.confidence] for b in used],
                  hovertemplate=("top-1 probability %{customdata[0]:.0%}\u2013%{customdata[1]:.0%}<br>"
                                 "%{customdata[2]} positions<br>mean confidence %{customdata[3]:.1%}<br>"
                                 "accuracy %{y:.1%}<extra></extra>"))
    marks = go.Scatter(x=centres, y=[b.confidence for b in used], mode="markers", name="mean confidence in the bin",
                       marker=dict(color=GAP_COLOR, symbol="line-ew-open", size=18, line=dict(width=3)),
                       hoverinfo="skip")
    diagonal = go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                          line=dict(color="#6c757d", dash="dash", width=1), hoverinfo="skip")
    title = f"Reliability: ECE {cal.ece:.3f} \u00b7 Brier {cal.brier:.3f} \u00b7 {cal.n} positions"
    layout = dict(
        title=dict(text=html.escape(title)),
        xaxis=dict(AXIS_STYLE, title=dict(text="model's top-1 probability (confidence)"), range=[0, 1],
                   tickformat=".0%", dtick=0.1),
        yaxis=dict(AXIS_STYLE, title=dict(text="accuracy"), range=[0, 1.12], tickformat=".0%"),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
        margin=dict(l=60, r=20, t=80, b=60), bargap=0, **PLAIN_LAYOUT,
    )
    if not used:
        layout["annotations"] = [dict(text="no positions", xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False)]
    return go.Figure(data=[bars, marks, diagonal], layout=layout)


def calibration_html(cal: Calibration) -> str:
    """ECE, Brier and accuracy in words, with a warning when the text is too short to mean much."""
    parts = [f"Top-1 accuracy {cal.accuracy:.0%} over {cal.n} positions; expected calibration error (ECE) "
             f"{cal.ece:.3f}; Brier score {cal.brier:.3f} (0 is perfect)."]
    for word, sign in (("Over", 1), ("Under", -1)):
        ranges = [f"{b.lo:.0%}\u2013{b.hi:.0%}" for b in cal.bins
                  if b.n >= 5 and sign * (b.confidence - b.accuracy) > 0.1]
        if ranges:
            parts.append(f"{word}-confident where it said {', '.join(ranges)}.")
    note = ""
    if cal.n < MIN_POSITIONS:
        note = (f'<p class="gs-cal-warn">Only {cal.n} positions: too few for a meaningful diagram (most bins hold a '
                f"handful). Paste a longer text, {MIN_POSITIONS}+ tokens, or try the sample.</p>")
    return f'<div class="gs-calibration"><p>{html.escape(" ".join(parts))}</p>{note}</div>'
