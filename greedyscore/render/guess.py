"""The guessing game -> HTML (the board, the last round, the score, the summary) and its chart."""

from __future__ import annotations

import math

import plotly.graph_objects as go

from ..guess import Game, surprises
from .chart import AXIS_STYLE, PLAIN_LAYOUT, token_label
from .html import legend_html, tokens_html
from .text import html_visible, pct
from .view import View

LEARNER_COLOR = "#e45756"
MODEL_COLOR = "#4c78a8"


def board_html(game: Game, palette: str = "cividis") -> str:
    """The text so far, coloured by the model's probability, then a box where the next unit goes."""
    view = View(palette=palette)
    shown = tokens_html(game.revealed, view) if game.revealed else '<div class="gs-tokens"></div>'
    if not game.done:  # inside the text block, right where the next token goes
        blank = '<span class="gs-guess-next" aria-label="the next token">?</span>'
        shown = shown[: shown.rindex("</div>")] + blank + "</div>"
    return f'<div class="gs-guess-board">{legend_html(view)}{shown}</div>'


def round_html(game: Game) -> str:
    """What the last guess met: the real unit, the model's view of it and of the guess."""
    if not game.rounds:
        how = "Pick what you think comes next" if game.pick else "Type what you think comes next, then press Guess"
        return f'<p class="gs-guess-round">{how}.</p>'
    r = game.rounds[-1]
    unit = game.units[r.unit]
    verdict = "\u2713 right" if r.hit else "\u2717 not this time"
    guess_p = math.exp(r.guess_logprob)
    return (
        f'<div class="gs-guess-round {"gs-hit" if r.hit else "gs-miss"}">'
        f"<p><b>{verdict}.</b> The next token was <code>{html_visible(unit.text)}</code>: the model gave it "
        f"{pct(math.exp(unit.logprob))} ({unit.bits:.2f} bits).</p>"
        f"<p>Your guess <code>{html_visible(r.guess)}</code> ({len(r.guess_ids)} token"
        f"{'' if len(r.guess_ids) == 1 else 's'}): the model gave it {pct(guess_p)}, rank {r.guess_rank} "
        f"for its first token. It cost you {r.learner_bits:.2f} bits"
        f"{', the model ' + format(r.model_bits, '.2f') + ' bits on the same menu' if game.pick else ''}.</p></div>"
    )


def score_html(game: Game) -> str:
    n = len(game.rounds)
    you, model = game.bits_per_unit()
    played = f"Round {n} of {game.playable}" if n else f"{game.playable} tokens to guess"
    nums = (f" \u00b7 hits {game.hits()}/{n} \u00b7 you <b>{you:.2f}</b> bits/token \u00b7 the model "
            f"<b>{model:.2f}</b> bits/token") if n else ""
    return f'<p class="gs-guess-score" id="gs-guess-score-line">{played}{nums}</p>'


def summary_html(game: Game) -> str:
    """Where the model was more surprised than the learner (or that it never was)."""
    if not game.rounds:
        return ""
    worst = surprises(game)
    you, model = game.bits_per_unit()
    head = (f"Over {len(game.rounds)} tokens you averaged {you:.2f} bits, the model {model:.2f} bits "
            f"(fewer is better: a surprisal of b bits is a 1-in-2^b chance).")
    if not worst:
        return f'<div class="gs-guess-summary"><p>{head} The model was never more surprised than you.</p></div>'
    places = ", ".join(f"<code>{html_visible(game.units[r.unit].text)}</code> (model {r.model_bits:.1f} bits, you "
                       f"{r.learner_bits:.1f})" for r in worst)
    count = sum(r.model_bits > r.learner_bits for r in game.rounds)
    return (f'<div class="gs-guess-summary"><p>{head} The model was more surprised than you at {count} '
            f"place{'' if count == 1 else 's'}: {places}.</p></div>")


def surprisal_figure(game: Game) -> go.Figure:
    """Both surprisal curves along the text, one point per round."""
    xs = [r.unit for r in game.rounds]
    labels = [token_label(game.units[r.unit].text) for r in game.rounds]  # Plotly: escaped, quotes kept
    traces = [
        go.Scatter(x=xs, y=[r.model_bits for r in game.rounds], name="the model", mode="lines+markers",
                   line=dict(color=MODEL_COLOR), text=labels,
                   hovertemplate="%{text}: %{y:.2f} bits<extra>model</extra>"),
        go.Scatter(x=xs, y=[r.learner_bits for r in game.rounds], name="you", mode="lines+markers",
                   line=dict(color=LEARNER_COLOR, dash="dot"), text=labels,
                   hovertemplate="%{text}: %{y:.2f} bits<extra>you</extra>"),
    ]
    layout = dict(title=dict(text="Surprisal per token (bits; lower = saw it coming)"),
                  xaxis=dict(AXIS_STYLE, title=dict(text="token"), tickmode="array", tickvals=xs, ticktext=labels,
                             tickangle=-60),
                  yaxis=dict(AXIS_STYLE, title=dict(text="surprisal (bits)"), rangemode="tozero"),
                  legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
                  margin=dict(l=60, r=20, t=80, b=90), **PLAIN_LAYOUT)
    return go.Figure(data=traces, layout=layout)
