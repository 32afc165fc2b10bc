"""A shared result's page parts: what it is and which model made it, a re-run's report, a share link;
everything stored is escaped exactly as live text is."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..sharing.document import Reproduction, SharedItem
from ..types import Message, ModelIdentity
from .explore import conversation_html, shown_fork_html
from .outputs import render_numbers, render_outputs
from .text import bdi, esc, html_visible
from .view import View

COPY_JS = """
element.addEventListener('click', (e) => {
  const button = e.target.closest('button.gs-copy');
  if (!button) return;
  const box = element.querySelector('input.gs-share-url');
  const done = () => { button.textContent = 'Copied'; };
  box.select();
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(box.value).then(done, () => { document.execCommand('copy'); done(); });
  } else {
    document.execCommand('copy');
    done();
  }
});
"""  # gr.HTML js_on_load of the share link: the clipboard API needs a secure page, else execCommand


def when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def weights_text(weights: str | None) -> str:
    return weights[:19] + "\u2026" if weights else "not visible here"


def shared_header_html(item: SharedItem) -> str:
    """What was shared, when, by which model and settings, and the messages before the turns shown."""
    m, s = item.model, item.settings
    what = {"chat": "a chat reply", "text": "a scored text"}[item.kind]
    if item.reply.forked_at is not None:
        what = f"a fork of a chat reply (another token at position {item.reply.forked_at})"
    settings = f"top-k {s.top_k}"
    if item.kind == "chat":
        settings = f"greedy, max {s.max_new_tokens} new tokens, {settings}"
    before = item.context if item.conversation is not None else ()  # a text's prompt: above the text, once
    return (
        f'<div class="gs-shared-head" role="region" aria-label="shared result">'
        f"<b>Shared result</b>: {what}, shared {when(item.created)}, read-only."
        f'<div class="gs-shared-model">Model <code>{bdi(m.name)}</code> \u00b7 backend <code>{bdi(m.backend)}</code>'
        f" \u00b7 weights <code>{bdi(weights_text(m.weights))}</code> \u00b7 {settings}"
        f" \u00b7 greedyscore {bdi(m.greedyscore)}</div>{messages_html('Before this', before)}</div>"
    )


def messages_html(title: str, messages: tuple[Message, ...]) -> str:
    """Messages shared with a result (those before its turns, a text's prompt), or ""."""
    rows = "".join(f"<li><b>{bdi(m.role)}</b>: {bdi(m.content)}</li>" for m in messages)
    return f'<div class="gs-shared-context">{title}:<ul>{rows}</ul></div>' if rows else ""


def not_shared_html(message: str) -> str:
    return f'<div class="gs-shared-head gs-shared-missing" role="alert"><b>Shared result</b>: {esc(message)}</div>'


def identities_html(stored: ModelIdentity, now: ModelIdentity) -> str:
    """Stored and current model identities side by side, differences marked."""
    rows = []
    for label, a, b in (("model", stored.name, now.name), ("backend", stored.backend, now.backend),
                        ("weights (sha256)", weights_text(stored.weights), weights_text(now.weights)),
                        ("scores from", stored.score_source, now.score_source),
                        ("greedyscore", stored.greedyscore, now.greedyscore)):
        cls = "" if a == b else ' class="gs-differs"'
        rows.append(f"<tr{cls}><th>{label}</th><td>{bdi(a)}</td><td>{bdi(b)}</td></tr>")
    return ('<table class="gs-identities"><thead><tr><th></th><th>stored</th><th>this server</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def reproduction_html(rep: Reproduction, stored: ModelIdentity, now: ModelIdentity) -> str:
    """The re-run's verdict, its numbers, the first tokens that differ, and both identities."""
    cls = "gs-repro-ok" if rep.reproduced and rep.messages_match is not False else "gs-repro-bad"
    facts = [f"token ids identical: {'yes' if rep.same_ids else 'no'} ({rep.n_stored} stored, {rep.n_now} now)",
             f"prompt ids identical: {'yes' if rep.same_prompt else 'no'}",
             *([f"the stored prompt ids are this server's template of the messages shown: "
                f"{'yes' if rep.messages_match else 'no'}"] if rep.messages_match is not None else []),
             f"max |\u0394p| of the chosen tokens: {rep.max_dp:.2g}"
             + (f" (token {rep.at_max})" if rep.at_max is not None and rep.max_dp > 0 else "")]
    diffs = "".join(f"<li>token {d.at}: stored {html_visible(d.stored)}, now {html_visible(d.now)}</li>"
                    for d in rep.differences)
    diff_html = f'<div>Tokens that differ:<ul>{diffs}</ul></div>' if diffs else ""
    if not rep.reproduced and stored.weights and now.weights and stored.weights != now.weights:
        facts.append("the weights differ: another model (or another version of it) runs here")
    items = "".join(f"<li>{esc(f)}</li>" for f in facts)
    return (f'<div class="gs-repro {cls}" role="status"><div class="gs-verdict">Re-run here: {esc(rep.verdict)}</div>'
            f"<ul>{items}</ul>{diff_html}{identities_html(stored, now)}</div>")


def share_link_html(url: str, expires: float | None = None) -> str:
    """The link with a copy button (COPY_JS), or nothing."""
    if not url:
        return ""
    note = f" It expires {when(expires)}." if expires else ""
    return (f'<div class="gs-share-link"><label>Link to this result: <input class="gs-share-url" readonly '
            f'value="{esc(url)}" size="48" aria-label="share link"></label> <button type="button" class="gs-copy">'
            f"Copy</button><span class=\"gs-sub\"> Anyone with the link can open it, read-only.{note}</span></div>")


def shared_view(item: SharedItem, view: View) -> tuple[str, str, Any, str]:
    """-> (header, the result coloured, its chart, its stats) for a shared item."""
    if item.conversation is not None:
        # a shared fork: beside its parent, as its author saw it
        body = conversation_html(item.conversation, view, forks=False, share=False) + shown_fork_html(
            item.conversation, view)
    else:
        body = messages_html("Scored as the reply to", item.messages) + render_outputs(item.reply, view)[0]
    fig, _, stats = render_numbers(item.reply, view)
    return shared_header_html(item), body, fig, stats
