"""Step mode's panel: the next-token distribution as bars, raw beside each sampler stage, and the
path built so far with the visitor's picks marked. Pure: a NextToken / Stepped -> HTML.

Interactive elements carry data attributes that `STEER_JS` turns into Gradio events:
  button.gs-step-take    data-token: take this token as the next one
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..stats import divergence
from ..types import NextToken, Sampler, ScoredReply
from .html import legend_html, tokens_html
from .text import esc, html_visible, pct
from .view import View

STEER_JS: str = Path(__file__).with_name("steer.js").read_text(encoding="utf-8")  # gr.HTML js_on_load
STEER_CSS: str = Path(__file__).with_name("steer.css").read_text(encoding="utf-8")
STAGE_NAMES = ("raw", "temperature", "top-k", "top-p")


def _bar(p: float, cls: str, what: str) -> str:
    width = f"{max(0.0, min(1.0, p)) * 100:.3g}%"
    return (f'<span class="gs-step-cell" title="{esc(what)}: {pct(p)}"><span class="gs-step-bar {cls}" '
            f'style="width:{width}"></span><span class="gs-step-num">{pct(p)}</span></span>')


def _sampler_words(s: Sampler) -> str:
    parts = ["greedy (temperature 0)" if s.temperature == 0 else f"temperature {s.temperature:g}",
             f"top-k {s.top_k}" if s.top_k else "top-k off", f"top-p {s.top_p:g}" if s.top_p < 1 else "top-p off"]
    return " \u2192 ".join(parts)


def distribution_html(view: NextToken | None, ended: bool = False) -> str:
    """The next token's top entries: one row each (a button that takes it), a bar per stage (raw,
    after temperature, top-k, top-p), the remainder, the entropy and p(sampling picks greedy's)."""
    if view is None:
        why = "the path has ended on an end-of-turn token" if ended else "start from a message"
        return f'<div class="gs-step-dist gs-step-empty">{esc(why)}: nothing follows.</div>'
    head = "".join(f"<th>{n}</th>" for n in STAGE_NAMES)
    rows = []
    for rank, e in enumerate(view.top, 1):
        greedy = " gs-step-greedy" if e.id == view.greedy_id else ""
        label = f"take {html_visible(e.text)}"
        cells = [_bar(e.raw, "gs-raw", "raw"),
                 *(_bar(p, f"gs-stage-{i}", STAGE_NAMES[i + 1]) for i, p in enumerate(e.stages))]
        rows.append(f'<tr class="gs-step-row{greedy}"><td class="gs-step-rank">{rank}</td><td>'
                    f'<button type="button" class="gs-step-take" data-token="{e.id}" aria-label="{esc(label)}">'
                    f'<code>{html_visible(e.text)}</code></button></td><td class="gs-step-id">{e.id}</td>'
                    f"{''.join(f'<td>{c}</td>' for c in cells)}</tr>")
    rest = "".join(f"<td>{_bar(p, 'gs-rest', name)}</td>" for p, name in
                   zip((view.rest_raw, *view.rest_stages), STAGE_NAMES))
    return (
        f'<div class="gs-step-dist"><p class="gs-step-summary">Next token: entropy {view.entropy:.3f} nats '
        f"\u00b7 sampler {esc(_sampler_words(view.sampler))} \u00b7 <b>p(sampling picks the greedy token) "
        f"{pct(view.p_greedy)}</b></p>"
        f'<table class="gs-step-table"><thead><tr><th>#</th><th>token (click to take)</th><th>id</th>{head}'
        f"</tr></thead><tbody>{''.join(rows)}<tr class=\"gs-step-rest\"><td></td><td>every other token</td><td>"
        f"</td>{rest}</tr></tbody></table><p class=\"gs-step-key\">Bars: the model's raw probability, then after "
        "each sampler stage in order (temperature, top-k, top-p), renormalised. Greedy, which the demo "
        "decodes with, always takes row 1.</p></div>"
    )


def path_html(reply: ScoredReply | None, view: View, p_greedy: Sequence[float] = (), sampler: Sampler | None = None
              ) -> str:
    """The path so far, coloured like any reply, the visitor's picks outlined and listed; with `p_greedy`,
    each token's tooltip also says how likely `sampler` was to keep the greedy token there."""
    if reply is None:
        return f'<div class="gs-reply">{legend_html(view)}<div class="gs-step-empty">No path yet.</div></div>'
    marked = set(reply.chosen)
    said = _sampler_words(sampler) if sampler is not None else ""
    notes = [f"{said}: p(it picks the greedy token here) {pct(p)}" for p in p_greedy]
    picks = ", ".join(f"{i} ({html_visible(reply.tokens[i].text)})" for i in sorted(marked))
    note = (f'<p class="gs-step-picks">Chosen by you (outlined): {picks}</p>' if marked
            else '<p class="gs-step-picks">Every token so far is the model\'s own greedy choice.</p>')
    note += '<p class="gs-step-key">An alternative in a token\'s tooltip restarts the path there with it.</p>'
    state = {"step": "paused: take a token, or finish greedily", "stop": "ended on an end-of-turn token",
             "length": "cut at the token limit", "abort": "stopped"}.get(reply.finish_reason, "")
    return (f'<div class="gs-reply gs-step-path" data-chosen="{",".join(map(str, sorted(marked)))}">'
            f"{legend_html(view)}{tokens_html(reply.tokens, view, fork=True, chosen=marked, notes=notes)}{note}"
            f'<p class="gs-step-state">{len(reply.tokens)} tokens \u00b7 {esc(state)}</p></div>')


def lens_html(p_greedy: list[float]) -> str:
    """Over a whole reply: how soon a sampled reply would part from the greedy one."""
    if not p_greedy:
        return ""
    d = divergence(p_greedy)
    return (f'<p class="gs-step-lens">Through this sampler, along this reply: p(every token the same) '
            f"{pct(d.p_same)} \u00b7 expected tokens before a sampled reply first differs "
            f"{d.expected_agree:.1f} of {len(p_greedy)} \u00b7 expected positions that differ "
            f"{d.expected_differ:.2f}</p>")
