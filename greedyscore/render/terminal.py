"""Scored reply -> terminal text: tokens on 24-bit ANSI colours, then a legend and a stats line. Control
characters are made visible (a model that emits ESC must not drive the terminal); newlines and tabs stay.
"""

from __future__ import annotations

from ..types import ScoredReply, ScoredToken
from .colors import ENTROPY_CAP, MODE_LABELS, check_mode, color_for, text_color, token_value
from .text import NEWLINE_MARK, char_mark, num, pct, seconds, sub_invisible, visible
from .view import View

RESET = "\x1b[0m"
LEGEND_BUCKETS = 5


def _rgb(hex_color: str) -> str:
    return f"{int(hex_color[1:3], 16)};{int(hex_color[3:5], 16)};{int(hex_color[5:7], 16)}"


def _style(t: ScoredToken, value: float, view: View) -> str:
    bg = color_for(value, view.palette)
    if t.special:  # dimmed, in the scale's colour, no background
        return f"\x1b[2;38;2;{_rgb(bg)}m"
    underline = ";4" if value < view.threshold else ""
    return f"\x1b[48;2;{_rgb(bg)};38;2;{_rgb(text_color(bg))}{underline}m"


def _colored(t: ScoredToken, value: float, view: View) -> str:
    style = _style(t, value, view)
    pieces = sub_invisible(t.text, lambda c: c if c in "\n\t" else char_mark(c)).split("\n")  # newlines, tabs kept
    # close the colour before each line break so the background does not run to the line's end
    return f"{NEWLINE_MARK}{RESET}\n".join(f"{style}{p}" for p in pieces) + RESET


def _plain(t: ScoredToken, value: float, threshold: float) -> str:
    body = f"{visible(t.text)}|{pct(t.prob)}"
    if t.special:
        out = "{" + body + "}"
    elif value < threshold:
        out = f"[[{body}]]"
    else:
        out = f"[{body}]"
    return out + "\n" * t.text.count("\n")


def _bucket_label(mode: str, lo: float, hi: float) -> str:
    if mode == "entropy":
        a, b = (1 - hi) * ENTROPY_CAP, (1 - lo) * ENTROPY_CAP
        return f"{a:.1f}\u2013{b:.1f}" + ("+" if lo == 0 else "")
    return f"{lo * 100:.0f}\u2013{hi * 100:.0f}%"


def legend_line(view: View = View(), use_color: bool = True) -> str:
    """The colour key in one line (ranges in the mode's units) and the non-colour cues."""
    color_by = check_mode(view.color_by)
    title = MODE_LABELS[color_by]
    below = view.threshold_text()
    if not use_color:
        return f"legend: [token|probability], [[{below}]], {{special token|probability}}; \u21b5 = newline"
    parts = []
    for k in range(LEGEND_BUCKETS):
        lo, hi = k / LEGEND_BUCKETS, (k + 1) / LEGEND_BUCKETS
        bg = color_for((lo + hi) / 2, view.palette)
        parts.append(f"\x1b[48;2;{_rgb(bg)}m   {RESET} {_bucket_label(color_by, lo, hi)}")
    return f"{title}: " + "  ".join(parts) + f"  | \x1b[4munderlined{RESET}: {below}  | \x1b[2mdim{RESET}: special"


def stats_line(reply: ScoredReply, view: View = View()) -> str:
    """Whole-reply numbers in one line."""
    s, tm = reply.stats, reply.timings
    below = sum(token_value(t, view.color_by) < view.threshold for t in reply.tokens)
    parts = [
        f"{s.n_tokens} tokens",
        f"mean logprob {num(s.mean_logprob)}",
        f"perplexity {num(s.perplexity)}",
        f"min prob {pct(s.min_prob)}",
        f"{below} with {view.threshold_text()}",
    ]
    if reply.verified:
        parts.append(f"near ties {sum(bool(t.near_tie) for t in reply.tokens)}")
    if reply.forked_at is not None:
        parts.append(f"forked at token {reply.forked_at} (the tokens before it are the original reply's)")
    parts += [
        f"generate {seconds(tm.generate_s)}, score {seconds(tm.score_s)}",
        f"{visible(reply.model)} ({visible(reply.backend)})",
        f"finish {visible(reply.finish_reason)}",
    ]
    return " \u00b7 ".join(parts)


def reply_ansi(reply: ScoredReply, view: View = View(), use_color: bool = True) -> str:
    """The reply with every token coloured by its confidence, a legend line and a stats line
    (use_color False: "[Paris|95.1%]...")."""
    values = [token_value(t, check_mode(view.color_by)) for t in reply.tokens]
    if use_color:
        body = "".join(_colored(t, v, view) for t, v in zip(reply.tokens, values, strict=True))
    else:
        body = "".join(_plain(t, v, view.threshold) for t, v in zip(reply.tokens, values, strict=True))
    return f"{body}\n\n{legend_line(view, use_color)}\n{stats_line(reply, view)}\n"
