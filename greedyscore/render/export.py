"""Raw numbers for spreadsheets: one CSV row per token (the JSON export is `ScoredReply.to_json`).

Texts are raw, quoted by the csv module (rows end in "\r\n", so a lone "\r" token is quoted too); a
cell a spreadsheet would run as a formula gets a leading apostrophe (OWASP), as does one starting
with an apostrophe, so `cell_text` undoes it exactly. Floats use repr: no digits are lost.
"""

from __future__ import annotations

import csv
import io

from ..types import Alternative, ScoredReply

COLUMNS: tuple[str, ...] = ("index", "id", "text", "special", "prob", "logprob", "rank", "entropy", "margin", "top")
VERIFY_COLUMNS: tuple[str, ...] = ("rescored_prob", "rescored_rank", "near_tie")  # only when verified
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # OWASP's list of cell starts a spreadsheet evaluates
QUOTE_MARK = "'"


def text_cell(text: str) -> str:
    """A text as a cell no spreadsheet runs. Example: text_cell("=1+1") -> "'=1+1"; text_cell("-") -> "'-" """
    return QUOTE_MARK + text if text.startswith((*FORMULA_START, QUOTE_MARK)) else text


def cell_text(cell: str) -> str:
    """Inverse of text_cell. Example: cell_text("'=1+1") -> "=1+1" """
    return cell[1:] if cell.startswith(QUOTE_MARK) else cell


def _f(x: float) -> str:
    return repr(float(x))  # shortest exact round-trip (also for numpy scalars)


def _escape_alt_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def format_top(top: tuple[Alternative, ...]) -> str:
    """Alternatives as "text:prob|text:prob"; "\\" and "|" in texts are backslash-escaped.
    Example: format_top((Alternative(1, "a|b", 0.5),)) -> "a\\\\|b:0.5" """
    return "|".join(f"{_escape_alt_text(a.text)}:{_f(a.prob)}" for a in top)


def parse_top(field: str) -> list[tuple[str, float]]:
    """Inverse of format_top (of `cell_text` of the CSV cell). Example: "a:0.5|b:0.25" -> [("a", 0.5), ("b", 0.25)]"""
    if field == "":
        return []
    items, chars = [""], iter(field)
    for ch in chars:
        if ch == "\\":
            items[-1] += next(chars, "\\")  # the escaped character (a trailing backslash stands for itself)
        elif ch == "|":
            items.append("")
        else:
            items[-1] += ch
    pairs = [item.rpartition(":") for item in items]  # the prob never holds ":"; the text may
    return [(text, float(prob)) for text, _, prob in pairs]


def tokens_csv(reply: ScoredReply) -> str:
    """One header row, then one row per scored token (special tokens included)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")  # fields with \r or \n are then quoted
    interval = any(t.entropy_max is not None for t in reply.tokens)  # a server's top-k only
    w.writerow(COLUMNS + (("entropy_max",) if interval else ()) + (VERIFY_COLUMNS if reply.verified else ()))
    for i, t in enumerate(reply.tokens):
        row: list[object] = [
            i, t.id, text_cell(t.text), int(t.special), _f(t.prob), _f(t.logprob), t.rank,
            _f(t.entropy), _f(t.margin), text_cell(format_top(t.top)),
        ]  # fmt: skip
        if interval:
            row.append("" if t.entropy_max is None else _f(t.entropy_max))
        if reply.verified:
            row += ["" if t.rescored_prob is None else _f(t.rescored_prob), t.rescored_rank or "", int(t.near_tie)]
        w.writerow(row)
    return buf.getvalue()
