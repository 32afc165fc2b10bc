"""A map above a long reply: one small cell per token in the reply's colours, its least confident
runs marked, so a 2,000-token reply's weak spots are found at a glance instead of by scrolling.

Pure HTML; `MAP_JS` (loaded once per page, see `MAP_HEAD`) makes it work:
  .gs-map-cells         the strip: focusable (a slider over token positions); arrow keys, Home/End,
                        PageUp/PageDown move its cursor, Enter jumps to the token under it
  span[data-k=K]        one cell per token (K = the token's index, as the spans' data-i)
  button[data-k=K]      a lowest run: jumps to its first token
A jump scrolls to the token in the `.gs-tokens` right after the map, focuses and highlights it,
and marks its bar on the reply's confidence chart.

The cells stay light (a bare span each, one delegated handler for all) and their colours come
from the same values and `color_for` as the token spans, split characters included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..detokenize import units
from ..types import ScoredToken
from .colors import (
    MODE_SHORT,
    check_mode,
    color_for,
    gradient_css,
    measure_text,
    ticks,
    token_value,
    unit_value,
    value_text,
)
from .text import esc, html_visible
from .view import View

MAP_MIN_TOKENS = 80  # a reply of more tokens than this gets a map above it
LOWEST_RUNS = 3  # how many runs below the threshold are marked and listed
MAP_JS: str = Path(__file__).with_name("map.js").read_text(encoding="utf-8")
_RUN = ' class="gs-map-run"'
MAP_HEAD = f"<script>{MAP_JS}</script>"  # launch(head=...): one document-wide handler for every map


@dataclass(frozen=True)
class Run:
    """Consecutive tokens below the threshold: [start, stop), its total shortfall under the
    threshold and its least confident value (both in the colour mode's [0, 1] scale)."""

    start: int
    stop: int
    shortfall: float
    lowest: float


def cell_values(tokens: Sequence[ScoredToken], color_by: str) -> list[float]:
    """Each token's confidence as its span is coloured: a split character's fragments all take the
    character's value (`unit_value`), every other token its own (`token_value`)."""
    values: list[float] = []
    for start, stop in units(tokens):
        if stop - start == 1:
            values.append(token_value(tokens[start], color_by))
        else:
            values.extend([unit_value(tokens[start:stop], color_by)] * (stop - start))
    return values


def lowest_runs(values: Sequence[float], threshold: float, k: int = LOWEST_RUNS) -> list[Run]:
    """The k maximal runs of values below the threshold with the largest total shortfall
    (sum of threshold - value): long stretches of doubt and single deep dips both rank high.
    Ties go to the earlier run.

    Example: lowest_runs([0.9, 0.1, 0.2, 0.9, 0.4], 0.5, 1) -> [Run(1, 3, 0.7, 0.1)]
    """
    runs: list[Run] = []
    start = None
    for i, v in enumerate([*values, threshold]):  # a sentinel at the threshold closes the last run
        if v < threshold and start is None:
            start = i
        elif v >= threshold and start is not None:
            part = values[start:i]
            runs.append(Run(start, i, sum(threshold - x for x in part), min(part)))
            start = None
    return sorted(runs, key=lambda r: (-r.shortfall, r.start))[:k]


def map_html(tokens: Sequence[ScoredToken], view: View = View(), min_tokens: int = MAP_MIN_TOKENS) -> str:
    """The map of a reply of more than `min_tokens` tokens ("" for a shorter one)."""
    mode = check_mode(view.color_by)
    if len(tokens) <= min_tokens:
        return ""
    values = cell_values(tokens, mode)
    runs = lowest_runs(values, view.threshold)
    marked = {i for r in runs for i in range(r.start, r.stop)}
    cells = "".join(
        f'<span data-k="{i}"{_RUN if i in marked else ""} style="background:{color_for(v, view.palette)}"'
        f' title="{_title(i, t, mode)}"></span>'
        for i, (t, v) in enumerate(zip(tokens, values))
    )
    n = len(tokens)
    label = (f"map of the reply's {n} tokens, coloured by {MODE_SHORT[mode]}: arrow keys move, "
             "Enter jumps to the token")
    strip = (f'<div class="gs-map-cells" tabindex="0" role="slider" aria-label="{esc(label)}" aria-valuemin="0"'
             f' aria-valuemax="{n - 1}" aria-valuenow="0" aria-valuetext="{_title(0, tokens[0], mode)}"'
             f' data-cur="0">{cells}</div>')
    return f'<div class="gs-map" data-n="{n}">{_head(n, view)}{strip}{_runs_html(runs, view)}</div>'


def _title(i: int, t: ScoredToken, mode: str) -> str:
    """A cell's tooltip (and the strip's spoken value at it), escaped: position, text, number."""
    return f"{i}: {html_visible(t.text, '(partial character)')} {esc(measure_text(t, mode))}"


def _head(n: int, view: View) -> str:
    """The title and a small key: the legend's gradient and end labels, the run mark."""
    mode = view.color_by
    scale = ticks(mode)
    return (
        f'<div class="gs-map-head"><span class="gs-map-title">Map of the reply: {n} tokens</span>'
        f'<span class="gs-map-key">{esc(scale[0][1])}'
        f'<span class="gs-map-bar" style="background:{gradient_css(view.palette)}"></span>{esc(scale[-1][1])}</span>'
        f'<span class="gs-map-key"><span class="gs-map-run-sample"></span> a least confident run</span>'
        '<span class="gs-map-help">click a cell, or focus the map and use the arrow keys and Enter</span></div>'
    )


def _runs_html(runs: Sequence[Run], view: View) -> str:
    """The lowest runs as buttons that jump to their first token."""
    if not runs:
        return f'<div class="gs-map-runs">no token below the threshold ({esc(view.threshold_text())})</div>'
    buttons = "".join(
        f'<button type="button" data-k="{r.start}" data-stop="{r.stop}" title="jump to token {r.start}">'
        f"{_span_text(r)} ({r.stop - r.start} {'token' if r.stop - r.start == 1 else 'tokens'}, least confident "
        f"{esc(value_text(view.color_by, r.lowest))})</button>"
        for r in runs
    )
    return (f'<div class="gs-map-runs">least confident runs ({esc(view.threshold_text())}, most total '
            f"shortfall first): {buttons}</div>")


def _span_text(r: Run) -> str:
    return f"token {r.start}" if r.stop - r.start == 1 else f"tokens {r.start}\u2013{r.stop - 1}"
