"""Raw numbers for spreadsheets: one CSV row per token (the JSON export is `ScoredReply.to_json`).

Texts are written raw (not made visible) and quoted by the csv module, so newlines, commas and
quotes round-trip through csv.reader. Floats use repr: no digits are lost.
"""

from __future__ import annotations

import csv
import io

from ..types import Alternative, ScoredReply

COLUMNS: tuple[str, ...] = ("index", "id", "text", "special", "prob", "logprob", "rank", "entropy", "margin", "top")
VERIFY_COLUMNS: tuple[str, ...] = ("rescored_prob", "rescored_rank", "near_tie")  # only when verified


def _f(x: float) -> str:
    return repr(float(x))  # shortest exact round-trip (also for numpy scalars)


def _escape_alt_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def format_top(top: tuple[Alternative, ...]) -> str:
    """Alternatives as "text:prob|text:prob"; "\\" and "|" in texts are backslash-escaped.

    Example: format_top((Alternative(1, "a|b", 0.5),)) -> "a\\\\|b:0.5"
    """
    return "|".join(f"{_escape_alt_text(a.text)}:{_f(a.prob)}" for a in top)


def parse_top(field: str) -> list[tuple[str, float]]:
    """Inverse of format_top. Example: parse_top("a:0.5|b:0.25") -> [("a", 0.5), ("b", 0.25)]"""
    if field == "":
        return []
    items, cur, i = [], [], 0
    while i < len(field):
        ch = field[i]
        if ch == "\\" and i + 1 < len(field):
            cur.append(field[i + 1])
            i += 2
            continue
        if ch == "|":
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    items.append("".join(cur))
    out = []
    for item in items:
        text, _, prob = item.rpartition(":")  # the prob never holds ":"; the text may
        out.append((text, float(prob)))
    return out


def tokens_csv(reply: ScoredReply) -> str:
    """One header row, then one row per scored token (special tokens included)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    interval = any(t.entropy_max is not None for t in reply.tokens)  # a server's top-k only
    w.writerow(COLUMNS + (("entropy_max",) if interval else ()) + (VERIFY_COLUMNS if reply.verified else ()))
    for i, t in enumerate(reply.tokens):
        row: list[object] = [
            i, t.id, t.text, int(t.special), _f(t.prob), _f(t.logprob), t.rank,
            _f(t.entropy), _f(t.margin), format_top(t.top),
        ]  # fmt: skip
        if interval:
            row.append("" if t.entropy_max is None else _f(t.entropy_max))
        if reply.verified:
            row += ["" if t.rescored_prob is None else _f(t.rescored_prob), t.rescored_rank or "", int(t.near_tie)]
        w.writerow(row)
    return buf.getvalue()
