"""The conversation coloured in place, and a reply's forks beside it: pure HTML from a Conversation,
with data attributes that `EXPLORE_JS` turns into Gradio events:
  [data-turn=N]          an assistant turn: click or Enter selects it (chart, stats, export)
  [data-source=N:P]      tokens of path P (0 = the reply, else a fork id) of turn N
  button.gs-fork         an alternative: data-at, data-token -> fork path P there
  button[data-show=N:P]  show fork P of turn N beside its parent
  button.gs-share        data-share=N:P: share path P of turn N (a link anyone can open)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..compare import ForkComparison, PathCost, compare_fork, forks_that_matter, path_cost
from ..conversation import ORIGINAL, Conversation, ForkNode, Turn
from ..types import ScoredReply
from .html import legend_html, tokens_html
from .text import esc, html_visible, num, pct, spoken
from .view import View

EXPLORE_JS: str = Path(__file__).with_name("explore.js").read_text(encoding="utf-8")  # gr.HTML js_on_load
FORK_POINTS = 3  # how many "forks that matter" to list
SNIPPET_CHARS = 60


def share_button(n: int, node: int, what: str) -> str:
    return (f'<button type="button" class="gs-share" data-share="{n}:{node}" '
            f'aria-label="share {esc(what)}: a link anyone can open">Share</button>')


def conversation_html(conv: Conversation, view: View, forks: bool = True, share: bool = True) -> str:
    """The legend, then every turn: the user's words as text, each reply as coloured tokens.
    forks: alternatives are buttons that fork there; share: a Share button on every reply."""
    turns = "".join(_turn_html(n, t, view, n == conv.selected, forks, share) for n, t in enumerate(conv.turns))
    empty = '<div class="gs-conv-empty">Ask something: the reply appears here, every token coloured.</div>'
    return f'<div class="gs-reply">{legend_html(view)}<div class="gs-conv">{turns or empty}</div></div>'


def _turn_html(n: int, turn: Turn, view: View, selected: bool, forks: bool = True, share: bool = True) -> str:
    user = f'<div class="gs-turn gs-turn-user"><div class="gs-bubble" dir="auto">{esc(turn.user)}</div></div>'
    if turn.reply is None:
        return user
    note = ""
    if turn.reply.finish_reason == "abort":
        note = '<div class="gs-turn-note">stopped: the reply ends where you stopped it</div>'
    elif turn.reply.finish_reason == "length":
        note = '<div class="gs-turn-note">cut at the token limit</div>'
    cls = "gs-turn gs-turn-reply" + (" gs-selected" if selected else "")
    return (
        f'{user}<div class="{cls}" data-turn="{n}" data-source="{n}:{ORIGINAL}" tabindex="0" role="group"'
        f' aria-label="reply {n + 1}: Enter shows its chart and numbers">'
        f'<div class="gs-bubble">{tokens_html(turn.reply.tokens, view, forks)}'
        f"{note}{share_button(n, ORIGINAL, f'reply {n + 1}') if share else ''}</div></div>"
    )


def live_html(text: str) -> str:
    """The reply being generated, as plain text until it is scored (a typing mark before any)."""
    body = esc(text) if text else '<span class="gs-typing">…</span>'
    bubble = f'<div class="gs-turn gs-turn-reply"><div class="gs-bubble">{body}</div></div>'
    return f'<div class="gs-conv gs-live">{bubble}</div>'


def fork_panel_html(conv: Conversation, view: View, busy: str = "", share: bool = True) -> str:
    """For the selected reply: the forks that matter, its fork tree, the shown fork beside its parent."""
    turn = conv.current
    if turn is None or turn.reply is None:
        return '<div class="gs-forks gs-empty">Forks: choose an alternative in any token\u2019s tooltip.</div>'
    n = conv.selected
    parts = [_points_html(n, turn), _tree_html(n, turn, conv.shown)]
    if busy:
        parts.append(f'<div class="gs-fork-busy" role="status">{esc(busy)}</div>')
    if conv.shown != ORIGINAL:
        node = turn.fork(conv.shown)
        parts.append(_beside_html(n, turn, node, view))
        if share:
            parts.append(share_button(n, node.id, f"fork {node.id}"))
    return f'<div class="gs-forks">{"".join(parts)}</div>'


def fork_outputs(conv: Conversation, view: View, busy: str = "", share: bool = True) -> tuple[str, Any]:
    """-> (the fork panel's HTML, the figure of the shown fork beside its parent, or None)."""
    from .chart import fork_figure

    figure = None
    turn = conv.current
    if turn is not None and conv.shown != ORIGINAL:
        node = turn.fork(conv.shown)
        parent = turn.path(node.parent)
        cmp = compare_fork(parent, node.reply)
        names = ("the reply" if node.parent == ORIGINAL else f"fork {node.parent}", f"fork {node.id}")
        figure = fork_figure(parent.tokens, node.reply.tokens, node.at, cmp.rejoin, view.color_by, names)
    return fork_panel_html(conv, view, busy, share), figure


def _points_html(n: int, turn: Turn) -> str:
    reply = turn.reply
    assert reply is not None
    items = []
    for p in forks_that_matter(reply, FORK_POINTS):
        done = turn.find(ORIGINAL, p.at, p.runner_up.id)
        leads = f" leads to: \u201c{esc(_snippet(done.reply))}\u201d" if done else " \u2192 compute this road"
        text = (f"at {html_visible(p.chosen)} ({pct(p.prob)}) the runner-up {html_visible(p.runner_up.text)} "
                f"({pct(p.runner_up.prob)}){leads}")
        label = esc(f"fork at token {p.at}: {spoken(p.runner_up.text)} instead of {spoken(p.chosen)}")
        items.append(f'<li><button type="button" class="gs-fork gs-point" data-at="{p.at}" '
                     f'data-token="{p.runner_up.id}" aria-label="{label}">{text}</button></li>')
    body = "".join(items) or "<li>no close calls: every token had a single clear choice</li>"
    return (f'<div class="gs-points" data-source="{n}:{ORIGINAL}"><span class="gs-h">Forks that matter</span>'
            f'<span class="gs-sub">the {FORK_POINTS} closest calls (smallest margin p1 \u2212 p2)</span>'
            f"<ol>{body}</ol></div>")


def _snippet(reply: ScoredReply) -> str:
    start = reply.forked_at or 0
    text = "".join(t.text for t in reply.tokens[start:] if not t.special)
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "\u2026"


def _tree_html(n: int, turn: Turn, shown: int) -> str:
    def branch(node: int) -> str:
        items = []
        for f in turn.children(node):
            was = turn.path(f.parent).tokens[f.at].text
            now = f.reply.tokens[f.at].text
            cost = path_cost(f.reply).total_logprob
            cls = ' class="gs-shown"' if f.id == shown else ""
            items.append(
                f'<li><button type="button" data-show="{n}:{f.id}"{cls}>fork {f.id}: at token {f.at} '
                f"{html_visible(was)} \u2192 {html_visible(now)} \u00b7 total logprob {num(cost)}</button>"
                f"{branch(f.id)}</li>"
            )
        return f"<ul>{''.join(items)}</ul>" if items else ""

    tree = branch(ORIGINAL)
    if not tree:
        return ""
    return f'<div class="gs-tree"><span class="gs-h">Fork tree</span>{tree}</div>'


def shown_fork_html(conv: Conversation, view: View) -> str:
    """The shown fork beside its parent, read-only (a shared fork); "" when no fork is shown."""
    turn = conv.current
    if turn is None or conv.shown == ORIGINAL:
        return ""
    return _beside_html(conv.selected or 0, turn, turn.fork(conv.shown), view, False)


def _beside_html(n: int, turn: Turn, node: ForkNode, view: View, forks: bool = True) -> str:
    """Fork `node` of turn `n` beside the path it forked from."""
    parent, fork = turn.path(node.parent), node.reply
    cmp = compare_fork(parent, fork)
    name = "the reply" if node.parent == ORIGINAL else f"fork {node.parent}"
    cols = (_column(n, node.parent, parent, cmp.forked_at, name, cmp.original, view, forks)
            + _column(n, node.id, fork, cmp.forked_at, f"fork {node.id}", cmp.fork, view, forks))
    return (f'<div class="gs-beside"><div class="gs-fork-cols">{cols}</div>'
            f'<p class="gs-rejoin">{_rejoin_text(cmp, fork)}</p></div>')


def _column(n: int, node: int, reply: ScoredReply, at: int, name: str, cost: PathCost, view: View,
            forks: bool = True) -> str:
    tokens = tokens_html(reply.tokens, view, forks, shared_until=at)
    return (
        f'<div class="gs-fork-col" data-source="{n}:{node}"><div class="gs-fork-head">'
        f"<b>{name} (took {html_visible(reply.tokens[at].text)})</b>"
        f"<span>total logprob {num(cost.total_logprob)} \u00b7 perplexity {num(cost.perplexity)}"
        f" \u00b7 {cost.n_tokens} tokens</span></div>{tokens}</div>"
    )


def _rejoin_text(cmp: ForkComparison, fork: ScoredReply) -> str:
    if cmp.rejoin is None:
        return f"The two roads part at token {cmp.forked_at} and do not meet again."
    in_fork, in_parent = cmp.rejoin
    return (f"The two roads part at token {cmp.forked_at} and meet again at "
            f"{html_visible(fork.tokens[in_fork].text)} (token {in_fork} of the fork, {in_parent} of the other).")
