"""Scored tokens -> escaped HTML: coloured token spans with CSS-only tooltips, a legend, stats.

Every string that comes from the model or the user goes through `html.escape(..., quote=True)`
(text and attributes alike) after invisible characters are made visible (token texts:
`html_visible`; other fields: `text.esc`, their direction controls marked, and `text.bdi` inline);
`gr.HTML` passes strings through unchanged, so this module is the only guard.

The gs-* classes are styled by assets/greedyscore.css (exported here as `CSS`). No cue rests on
colour alone: a token below the threshold is underlined (gs-low), a near tie outlined (gs-near-tie).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import replace
from html import escape
from pathlib import Path

from ..detokenize import units
from ..types import ScoredReply, ScoredToken
from .colors import (
    MODE_LABELS,
    MODE_SHORT,
    check_mode,
    check_palette,
    color_for,
    gradient_css,
    measure_text,
    text_color,
    ticks,
    token_value,
    unit_value,
)
from .map import map_html
from .text import bdi, char_mark, entropy_text, esc, html_visible, num, pct, seconds, spoken, sub_invisible
from .view import View

CSS_PATH = Path(__file__).with_name("greedyscore.css")  # package data; assets/greedyscore.css links here
CSS: str = CSS_PATH.read_text(encoding="utf-8")

__all__ = ["CSS", "CSS_PATH", "legend_html", "page_html", "reply_html", "stats_html", "tokens_html"]


def _html_mark(ch: str) -> str:
    if ch == "\n":
        return '<span class="gs-ws" aria-hidden="true">\u21b5</span>\n'  # mark, then a real break
    if ch == "\t":
        return '<span class="gs-ws" aria-hidden="true">\u21e5</span>\t'
    return f'<span class="gs-ctl">{esc(char_mark(ch))}</span>'


def body_html(text: str) -> str:
    """A token's text as HTML: escaped, whitespace kept, newlines/tabs/control chars marked.

    Example: body_html("a<b\\n") -> 'a&lt;b<span class="gs-ws" aria-hidden="true">↵</span>\\n'
    """
    return sub_invisible(esc(text), _html_mark)


def _alt_row(text: str, prob: float, chosen: bool, fork_at: int | None = None, token_id: int = 0) -> str:
    """One alternative: text, bar, percentage. With fork_at, a button that forks the reply there."""
    shown = html_visible(text, "\u2205")
    inner = (
        f'<span class="gs-alt-t">{shown}</span>'
        f'<span class="gs-alt-b"><span style="width:{max(0.0, min(1.0, prob)) * 100:.1f}%"></span></span>'
        f'<span class="gs-alt-p">{pct(prob)}</span>'
    )
    if chosen:
        return f'<span class="gs-alt gs-chosen">{inner}</span>'
    if fork_at is None:
        return f'<span class="gs-alt">{inner}</span>'
    label = esc(f"continue with {spoken(text)} ({pct(prob)}) instead")
    return (f'<button type="button" class="gs-alt gs-fork" data-at="{fork_at}" data-token="{token_id}"'
            f' title="{label}" aria-label="{label}">{inner}</button>')


def _alternatives(t: ScoredToken, fork_at: int | None = None) -> str:
    rows = [_alt_row(a.text, a.prob, a.id == t.id, fork_at, a.id) for a in t.top]
    if t.top and all(a.id != t.id for a in t.top):
        rows.append(f'<span class="gs-alt-more">\u22ef chosen token, rank {t.rank}:</span>')
        rows.append(_alt_row(t.text, t.prob, True))
    return f'<span class="gs-alts">{"".join(rows)}</span>' if rows else ""


def _notes(t: ScoredToken) -> str:
    notes: list[tuple[str, str]] = []  # (class, plain text)
    if t.text == "" and not t.special:
        notes.append(("gs-tip-note", "ends inside a multi-byte character"))
    if t.rescored_prob is not None:
        rescored = pct(t.rescored_prob) + (f" (rank {t.rescored_rank})" if t.rescored_rank is not None else "")
        if t.near_tie:
            why = "batched/cached arithmetic can flip the argmax when two tokens are this close"
            notes.append(("gs-tip-note gs-tip-tie", f"near tie: rescoring the whole sequence gives {rescored}; {why}"))
        else:
            notes.append(("gs-tip-note", f"verified: rescoring the whole sequence gives {rescored}"))
    return "".join(f'<span class="{cls}">{esc(text)}</span>' for cls, text in notes)


def _numbers(t: ScoredToken, fork_at: int | None, head: str, note: str = "") -> str:
    """One token's block in a tooltip: its text and id, probability, numbers, alternatives, notes."""
    kind = " \u00b7 special" if t.special else ""
    return (
        f'<span class="gs-tip-tok">{head} <span class="gs-tip-id">id {t.id}{kind}</span></span>'
        f'<span class="gs-tip-p">{pct(t.prob)}</span>'
        f'<span class="gs-tip-nums">logprob {num(t.logprob)} \u00b7 entropy {entropy_text(t.entropy, t.entropy_max)}'
        f" \u00b7 margin {pct(t.margin)} \u00b7 rank {t.rank}</span>"
        f"{_alternatives(t, fork_at)}{_notes(t)}"
        + (f'<span class="gs-tip-lens">{esc(note)}</span>' if note else "")
    )


def tooltip_html(t: ScoredToken, fork_at: int | None = None, note: str = "") -> str:
    """The hover/focus card: probability, logprob, entropy, margin, rank, top-k bars, notes.
    With fork_at (the token's position), each alternative is a button that forks the reply there."""
    head = html_visible(t.text, "(partial character)")
    return f'<span class="gs-tip" role="tooltip">{_numbers(t, fork_at, head, note)}</span>'


def _classes(tokens: Sequence[ScoredToken], value: float, threshold: float, extra: str) -> str:
    cls = "gs-token" + extra
    if any(t.special for t in tokens):
        cls += " gs-special"
    if value < threshold:
        cls += " gs-low"
    if any(t.rescored_prob is not None and t.near_tie for t in tokens):
        cls += " gs-near-tie"
    return cls


def token_html(t: ScoredToken, i: int, view: View = View(), fork: bool = False, extra_class: str = "",
               note: str = "") -> str:
    """One focusable token span with its numbers as data-* attributes and its tooltip."""
    value = token_value(t, view.color_by)
    bg = color_for(value, view.palette)
    near_tie = t.rescored_prob is not None and t.near_tie
    cls = _classes([t], value, view.threshold, (" gs-cont" if t.text == "" else "") + extra_class)
    label = f"{spoken(t.text)}, {pct(t.prob)}" + (", near tie" if near_tie else "")
    extra = ""
    if t.rescored_prob is not None:
        extra += f' data-rescored-prob="{float(t.rescored_prob)!r}"'
    if t.rescored_rank is not None:
        extra += f' data-rescored-rank="{t.rescored_rank}"'
    return (
        f'<span class="{cls}" tabindex="0" role="group" data-i="{i}" data-id="{t.id}"'
        f' data-prob="{float(t.prob)!r}" data-logprob="{float(t.logprob)!r}"'
        f' data-entropy="{float(t.entropy)!r}" data-margin="{float(t.margin)!r}" data-rank="{t.rank}"{extra}'
        f' aria-label="{esc(label)}" style="background:{bg};color:{text_color(bg)};--gs-bg:{bg}">'
        f"{body_html(t.text)}{tooltip_html(t, i if fork else None, note)}</span>"
    )


def unit_html(
    parts: Sequence[ScoredToken], i: int, view: View = View(), fork: bool = False, extra_class: str = "",
    notes: Sequence[str] = (),
) -> str:
    """A character split over several byte tokens, drawn as one unit with its character. Its
    colour is the character's confidence (probability: the product of the fragments'; margin
    and entropy: the least confident fragment); its tooltip lists every fragment's numbers."""
    text = parts[-1].text
    value = unit_value(parts, view.color_by)
    bg = color_for(value, view.palette)
    joint = math.exp(sum(t.logprob for t in parts))
    cls = _classes(parts, value, view.threshold, " gs-unit" + extra_class)
    label = f"{spoken(text)}, {len(parts)} tokens, {pct(joint)}"
    heads = [f"fragment {k + 1} of {len(parts)}: {esc(display_bytes(t))}" for k, t in enumerate(parts)]
    blocks = "".join(
        f'<span class="gs-frag">{_numbers(t, i + k if fork else None, head, notes[k] if notes else "")}</span>'
        for k, (t, head) in enumerate(zip(parts, heads))
    )
    tip = (
        f'<span class="gs-tip" role="tooltip"><span class="gs-tip-tok">{html_visible(text, "(partial character)")}'
        f' <span class="gs-tip-id">{len(parts)} tokens</span></span>'
        f'<span class="gs-tip-p">{pct(joint)}</span>'
        f'<span class="gs-tip-nums">the character: its fragments\u2019 probabilities multiplied</span>{blocks}</span>'
    )
    return (
        f'<span class="{cls}" tabindex="0" role="group" data-i="{i}" data-n="{len(parts)}"'
        f' data-id="{" ".join(str(t.id) for t in parts)}" data-prob="{joint!r}"'
        f' data-logprob="{sum(t.logprob for t in parts)!r}" aria-label="{esc(label)}"'
        f' style="background:{bg};color:{text_color(bg)};--gs-bg:{bg}">{body_html(text)}{tip}</span>'
    )


def display_bytes(t: ScoredToken) -> str:
    """A fragment's own bytes as the model's vocabulary shows them (its first alternative that is it)."""
    return next((a.text for a in t.top if a.id == t.id), f"id {t.id}")


def tokens_html(
    tokens: Sequence[ScoredToken], view: View = View(), fork: bool = False, shared_until: int | None = None,
    token_map: bool = True, chosen: Collection[int] = (), notes: Sequence[str] = (),
) -> str:
    """All tokens in order inside one pre-wrap block (no legend); split characters as units.

    fork: alternatives in tooltips are buttons (data-at, data-token) that fork the reply there.
    shared_until: a fork's shared prefix (dimmed) ends here, and this token is where it diverges.
    token_map: above a long reply (render/map.py), its map, right before the block.
    chosen: positions picked by hand (step mode), outlined; notes: one more tooltip line per token.
    """
    check_mode(view.color_by)
    check_palette(view.palette)
    if not tokens:
        return '<div class="gs-tokens"><span class="gs-empty">(no tokens)</span></div>'
    spans = []
    for start, stop in units(tokens):
        extra = ""
        if shared_until is not None:
            extra = " gs-shared" if stop <= shared_until else " gs-diverge" if start <= shared_until < stop else ""
        if any(start <= c < stop for c in chosen):
            extra += " gs-picked"
        if stop - start == 1:
            spans.append(token_html(tokens[start], start, view, fork, extra, notes[start] if notes else ""))
        else:
            spans.append(unit_html(tokens[start:stop], start, view, fork, extra, notes[start:stop]))
    return f'{map_html(tokens, view) if token_map else ""}<div class="gs-tokens">{"".join(spans)}</div>'


def reply_html(reply: ScoredReply, view: View = View()) -> str:
    """The legend followed by the reply's tokens: what a `gr.HTML` output shows."""
    return (f'<div class="gs-reply">{legend_html(view)}'
            f"{tokens_html(reply.tokens, view, shared_until=reply.forked_at, chosen=reply.chosen)}</div>")


def legend_html(view: View = View()) -> str:
    """An always-visible key: gradient bar with ticks and the threshold, and what each cue means.

    Example: "50%" in legend_html(View("prob", "cividis", 0.5)) -> True
    """
    mode = check_mode(view.color_by)
    th = min(1.0, max(0.0, view.threshold))
    tick_spans = "".join(
        f'<span class="gs-legend-tick" style="left:{p * 100:.4g}%">{escape(label, quote=True)}</span>'
        for p, label in ticks(mode)
    )
    below = escape(replace(view, threshold=th).threshold_text(), quote=True)
    return (
        f'<div class="gs-legend" role="note" aria-label="Colour key: {escape(MODE_LABELS[mode], quote=True)}">'
        f'<span class="gs-legend-title">Colour: {escape(MODE_LABELS[mode], quote=True)}</span>'
        f'<span class="gs-legend-scale">'
        f'<span class="gs-legend-bar" style="background:{gradient_css(view.palette)}">'
        f'<span class="gs-legend-threshold" style="left:{th * 100:.4g}%" title="threshold: {below}"></span>'
        f"</span>"
        f'<span class="gs-legend-ticks">{tick_spans}</span>'
        f"</span>"
        f'<span class="gs-legend-keys">'
        f'<span class="gs-key"><span class="gs-key-sample gs-low">abc</span> underlined: {below}</span>'
        f'<span class="gs-key"><span class="gs-key-sample gs-near-tie">abc</span> dotted outline: near tie</span>'
        f'<span class="gs-key"><span class="gs-key-sample gs-special">&lt;|end|&gt;</span> special token</span>'
        f'<span class="gs-key"><span class="gs-key-sample gs-ws">\u21b5</span> newline</span>'
        f'<span class="gs-key">hover or Tab to a token for its numbers and alternatives</span>'
        f"</span>"
        f"</div>"
    )


def _chip(t: ScoredToken, view: View) -> str:
    bg = color_for(token_value(t, view.color_by), view.palette)
    shown = html_visible(t.text, "(partial character)")
    return (f'<span class="gs-chip" style="background:{bg};color:{text_color(bg)}">{shown} '
            f"{esc(measure_text(t, view.color_by))}</span>")


def stats_rows(reply: ScoredReply, view: View = View()) -> list[tuple[str, str]]:
    """(label, HTML value) pairs for the whole-reply table; values are already escaped.

    "below threshold" and "least confident" use the colour mode's measure, and say which.
    """
    color_by = check_mode(view.color_by)
    toks, s, tm = reply.tokens, reply.stats, reply.timings
    values = [token_value(t, color_by) for t in toks]
    below = sum(v < view.threshold for v in values)
    worst = sorted(range(len(toks)), key=values.__getitem__)[:5]
    rate = f" \u00b7 {s.n_tokens / tm.generate_s:.1f} tok/s" if tm.generate_s > 0 else ""
    if reply.verified:
        ties = sum(bool(t.near_tie) for t in toks)
        tie_text = f"{ties} of {len(toks)} (rescoring the whole sequence)"
    else:
        tie_text = "not verified"
    finish = esc(reply.finish_reason)
    if reply.finish_reason == "length":
        finish = f'<span class="gs-warn">{finish}: stopped at the token limit, the reply is cut</span>'
    elif reply.finish_reason == "abort":
        finish = f'<span class="gs-warn">{finish}: stopped by you, the reply is cut</span>'
    rows = [
        ("tokens", str(s.n_tokens)),
        ("mean logprob", num(s.mean_logprob)),
        ("perplexity", num(s.perplexity)),
        ("min probability", pct(s.min_prob)),
        (f"below threshold (by {MODE_SHORT[color_by]})", f"{below} ({esc(view.threshold_text())})"),
        (
            f"least confident (by {MODE_SHORT[color_by]})",
            "".join(_chip(toks[i], view) for i in worst) or "\u2013",
        ),
        ("near ties", tie_text),
        ("finish", finish),
        ("time", f"generate {seconds(tm.generate_s)} \u00b7 score {seconds(tm.score_s)}{rate}"),
        ("model", f"{bdi(reply.model)} \u00b7 {bdi(reply.backend)}"),
    ]
    if reply.score_source:
        rows.append(("scores from", bdi(reply.score_source)))
    if reply.forked_at is not None:
        rows.append(("forked at", f"token {reply.forked_at} (the tokens before it are the original reply's)"))
    if reply.notes:
        rows.append(("notes", "<br>".join(bdi(n) for n in reply.notes)))
    return rows


def stats_html(reply: ScoredReply, view: View = View()) -> str:
    """Whole-reply numbers as a small table (tokens, mean logprob, perplexity, weakest tokens...)."""
    rows = "".join(f'<tr><th scope="row">{k}</th><td>{v}</td></tr>' for k, v in stats_rows(reply, view))
    return f'<table class="gs-stats">{rows}</table>'


def page_html(reply: ScoredReply, view: View = View()) -> str:
    """A standalone HTML document (CSS inlined): for saving a reply to a file."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>greedyscore \u2013 {esc(reply.model)}</title><style>{CSS}</style></head><body>"
        f"{reply_html(reply, view)}{stats_html(reply, view)}"
        "</body></html>"
    )
