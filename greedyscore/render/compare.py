"""A Comparison -> side-by-side HTML with a diverging strip of the difference, and its chart; with one
tokenizer on both sides, also the per-step divergence (KL, top-k overlap, greedy choices) and its chart."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from ..align import Comparison, Divergence, Span, biggest
from .chart import AXIS_STYLE, MAX_TICK_LABELS, PLAIN_LAYOUT, tick_label, token_label
from .html import tokens_html
from .text import bdi, esc, html_visible, pct, plotly_text
from .view import View

CAP = 2.0  # nats: |log p_b - log p_a| beyond this gets the strongest colour
LESS, MORE = (202, 0, 32), (5, 113, 176)  # red: B less sure; blue: B surer (ColorBrewer RdBu ends)
KL_COLOR, DIFFERS_COLOR, OVERLAP_COLOR = "#5c7cfa", "#c92a2a", "#2b8a3e"
KL_HELP = ("At each token: KL(A\u2016B) = \u03a3 p<sub>A</sub> (log p<sub>A</sub> \u2212 log p<sub>B</sub>) over "
           "the whole vocabulary, in nats (0: B predicts exactly as A); top-k overlap: the share of A's k likeliest "
           "next tokens among B's; \u25c6 where the greedy choices differ.")


def delta_color(delta: float) -> str:
    """White at 0, towards red (B less sure) or blue (B surer), full at CAP nats.

    Example: delta_color(0.0) -> "rgb(255,255,255)"
    """
    x = max(-1.0, min(1.0, delta / CAP)) if math.isfinite(delta) else math.copysign(1.0, delta)
    end = MORE if x > 0 else LESS
    rgb = (round(255 + (c - 255) * abs(x)) for c in end)
    return "rgb({},{},{})".format(*rgb)


def _strip(spans: tuple[Span, ...]) -> str:
    cells = []
    for s in spans:
        tip = (f"{s.text!r}: A {pct(math.exp(s.logprob_a))}, B {pct(math.exp(s.logprob_b))} "
               f"(\u0394 log p {s.delta:+.3f} nats, {s.points:+.1f} points)")
        dark = abs(s.delta) > CAP * 0.6
        cells.append(f'<span class="gs-cmp-span" style="background:{delta_color(s.delta)};'
                     f'color:{"#fff" if dark else "#212529"}" title="{esc(tip)}" '
                     f'data-delta="{s.delta!r}">{html_visible(s.text, empty="")}</span>')
    return f'<div class="gs-cmp-strip">{"".join(cells)}</div>'


def _legend() -> str:
    stops = ", ".join(delta_color(CAP * x / 4) for x in range(-4, 5))
    return ('<div class="gs-cmp-legend"><span>B less sure</span>'
            f'<span class="gs-cmp-bar" style="background:linear-gradient(to right, {stops})"></span>'
            f"<span>B surer</span> <small>\u0394 log-probability of each span, B \u2212 A, full colour at "
            f"\u00b1{CAP:g} nats; hover a span for both probabilities</small></div>")


def compare_html(cmp: Comparison, palette: str = "cividis") -> str:
    """Both sides coloured by probability, the difference strip with its legend, the biggest changes."""
    a, b = bdi(cmp.label_a), bdi(cmp.label_b)
    rows = []
    for s in biggest(cmp):
        if abs(s.points) < 0.05:
            continue
        way = "less" if s.points < 0 else "more"
        rows.append(f"<li>B is {abs(s.points):.1f} points {way} sure of <code>{html_visible(s.text)}</code> "
                    f"({pct(math.exp(s.logprob_a))} \u2192 {pct(math.exp(s.logprob_b))})</li>")
    changes = f'<ul class="gs-cmp-biggest">{"".join(rows)}</ul>' if rows else "<p>No span changed by 0.05 points.</p>"
    total_a = sum(s.logprob_a for s in cmp.spans)
    total_b = sum(s.logprob_b for s in cmp.spans)
    notes = "".join(f'<p class="gs-cmp-note">{esc(n)}</p>' for n in cmp.notes)
    return (
        f'<div class="gs-compare"><p><b>A:</b> {a} \u00b7 <b>B:</b> {b} \u00b7 whole text: log p A {total_a:.2f}, '
        f"B {total_b:.2f} nats \u00b7 {len(cmp.spans)} spans</p>{notes}"
        f'<div class="gs-cmp-sides"><div><h4>A: {a}</h4>{tokens_html(cmp.a.tokens, View(palette=palette))}</div>'
        f'<div><h4>B: {b}</h4>{tokens_html(cmp.b.tokens, View(palette=palette))}</div></div>'
        f"<h4>Difference, B \u2212 A</h4>{_legend()}{_strip(cmp.spans)}<h4>Biggest changes</h4>{changes}"
        f"{divergence_html(cmp)}</div>"
    )


def divergence_html(cmp: Comparison) -> str:
    """The per-step summary (mean and largest KL, where the greedy choices differ, mean top-k overlap),
    or why there is none."""
    d = cmp.divergence
    if d is None:  # no reason: none was asked for (`align.compare` alone)
        why = cmp.no_divergence and f'<p class="gs-cmp-note">{esc(cmp.no_divergence)}</p>'
        return f'<div class="gs-cmp-kl gs-cmp-kl-none">{why}</div>' if why else ""
    n, at, differs = len(d.steps), d.max_at, d.differs_at
    worst = "" if at is None else (f" \u00b7 largest {d.steps[at].kl:.3g} nats at token #{at} "
                                   f"<code>{html_visible(cmp.a.tokens[at].text)}</code>")
    where = ", ".join(f"#{i} (A <code>{html_visible(d.steps[i].shown_a)}</code>, B "
                      f"<code>{html_visible(d.steps[i].shown_b)}</code>)" for i in differs[:8])
    more = ", \u2026" if len(differs) > 8 else ""
    where = f": {where}{more}" if differs else ""
    notes = "".join(f'<p class="gs-cmp-note">{esc(x)}</p>' for x in d.notes)
    return (f'<div class="gs-cmp-kl"><h4>Per-step divergence, KL(A\u2016B)</h4>'
            f'<p class="gs-cmp-kl-summary">mean KL {d.mean_kl:.3g} nats over {n} tokens{worst} \u00b7 '
            f"top-{d.k} overlap {d.mean_overlap:.0%} on average \u00b7 the greedy choice differs at "
            f'<span class="gs-cmp-kl-differs">{len(differs)}</span> of {n} tokens{where}</p>'
            f'{notes}<p class="gs-cmp-kl-help"><small>{KL_HELP}</small></p></div>')


def compare_outputs(cmp: Comparison) -> tuple[str, go.Figure, dict]:
    """What the Compare tab and /compare show: (side-by-side HTML, figure, JSON)."""
    return compare_html(cmp), compare_figure(cmp), cmp.to_json()


def compare_figure(cmp: Comparison) -> go.Figure:
    """\u0394 log-probability per span (diverging bars) and both sides' span probabilities."""
    xs = list(range(len(cmp.spans)))
    labels = [token_label(s.text) for s in cmp.spans]  # Plotly: escaped, quotes kept
    bars = go.Bar(x=xs, y=[s.delta for s in cmp.spans], name="\u0394 log p (B \u2212 A, nats)",
                  marker=dict(color=[delta_color(s.delta) for s in cmp.spans], line=dict(color="#adb5bd", width=0.5)),
                  hovertext=labels, hovertemplate="%{hovertext}: \u0394 %{y:+.3f} nats<extra></extra>")
    pa = go.Scatter(x=xs, y=[math.exp(s.logprob_a) for s in cmp.spans], name=f"A: {plotly_text(cmp.label_a)}",
                    mode="lines", yaxis="y2", line=dict(color="#212529", width=1), hoverinfo="skip")
    pb = go.Scatter(x=xs, y=[math.exp(s.logprob_b) for s in cmp.spans], name=f"B: {plotly_text(cmp.label_b)}",
                    mode="lines", yaxis="y2", line=dict(color="#e8590c", width=1, dash="dot"), hoverinfo="skip")
    layout = dict(
        title=dict(text="B \u2212 A along the text"),
        xaxis=dict(AXIS_STYLE, title=dict(text="span"), tickmode="array", tickvals=xs[:: max(1, len(xs) // 40)],
                   ticktext=labels[:: max(1, len(xs) // 40)], tickangle=-60),
        yaxis=dict(AXIS_STYLE, title=dict(text="\u0394 log p (nats)"), zeroline=True),
        yaxis2=dict(AXIS_STYLE, title=dict(text="probability"), overlaying="y", side="right", range=[0, 1.05],
                    tickformat=".0%", showgrid=False),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
        margin=dict(l=60, r=70, t=80, b=90), **PLAIN_LAYOUT,
    )
    return go.Figure(data=[bars, pa, pb], layout=layout)


def divergence_figure(cmp: Comparison) -> go.Figure:
    """KL(A||B) per token (bars), \u25c6 where the greedy choices differ, the top-k overlap on a second axis;
    where there is no per-step divergence, the reason in place of the chart."""
    d = cmp.divergence
    if d is None:
        why = cmp.no_divergence or "no per-step divergence was computed"
        note = dict(text=plotly_text(why), showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
        return go.Figure(layout=dict(title=dict(text="Per-step divergence"), annotations=[note],
                                     xaxis=dict(visible=False), yaxis=dict(visible=False), **PLAIN_LAYOUT))
    return go.Figure(data=_divergence_traces(cmp, d), layout=_divergence_layout(cmp, d))


def _divergence_traces(cmp: Comparison, d: Divergence) -> list:
    xs = list(range(len(d.steps)))
    hover = [f"{token_label(t.text)}: KL {s.kl:.4g} nats, top-{d.k} overlap {s.overlap:.0%}<br>greedy: A "
             f"{token_label(s.shown_a)}, B {token_label(s.shown_b)}" for t, s in zip(cmp.a.tokens, d.steps)]
    kl = go.Bar(x=xs, y=[s.kl for s in d.steps], name="KL(A\u2016B), nats", marker=dict(color=KL_COLOR),
                hovertext=hover, hovertemplate="%{hovertext}<extra></extra>")
    at = d.differs_at
    differs = go.Scatter(x=at, y=[d.steps[i].kl for i in at], name="greedy choice differs", mode="markers",
                         marker=dict(symbol="diamond", size=9, color=DIFFERS_COLOR, line=dict(color="white", width=1)),
                         hovertext=[hover[i] for i in at], hovertemplate="%{hovertext}<extra></extra>")
    overlap = go.Scatter(x=xs, y=[s.overlap for s in d.steps], name=f"top-{d.k} overlap", mode="lines", yaxis="y2",
                         line=dict(color=OVERLAP_COLOR, width=1, shape="hv"), hoverinfo="skip")
    return [kl, differs, overlap]


def _divergence_layout(cmp: Comparison, d: Divergence) -> dict:
    every = max(1, -(-len(d.steps) // MAX_TICK_LABELS))
    xs = list(range(0, len(d.steps), every))
    return dict(
        title=dict(text="Per-step divergence of B from A"),
        xaxis=dict(AXIS_STYLE, title=dict(text="token"), tickmode="array", tickvals=xs,
                   ticktext=[tick_label(cmp.a.tokens[i]) for i in xs], tickangle=-60),
        yaxis=dict(AXIS_STYLE, title=dict(text="KL(A\u2016B), nats"), rangemode="tozero"),
        yaxis2=dict(AXIS_STYLE, title=dict(text=f"top-{d.k} overlap"), overlaying="y", side="right",
                    range=[0, 1.05], tickformat=".0%", showgrid=False),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
        margin=dict(l=60, r=70, t=80, b=90), **PLAIN_LAYOUT,
    )
