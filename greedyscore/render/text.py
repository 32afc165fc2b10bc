"""Plain-text helpers shared by every renderer: visible token texts and number formats.

A token text can hold anything a model emits: newlines, tabs, control bytes, zero-width and
bidi-override characters. Shown raw they vanish, break the layout or (in a terminal) inject
escape sequences, so every renderer shows them through `visible` first, then escapes the result
for its medium (`html_visible` for HTML and Plotly's HTML-like labels).

Every other string from a user, client or model reaches HTML through `esc` and Plotly through
`plotly_text`: escaped, with what would reorder the line made visible (bidi controls: U+202E once
made "... weights verified ok" read backwards over the real values) and lone surrogates, which no
page can encode. Inline fields are also isolated with `bdi`, so right-to-left letters cannot move
their neighbours.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable
from functools import lru_cache

# Invisible or layout-breaking: C0/C1 controls, DEL, zero-width and bidi controls, line/paragraph
# separators, BOM, interlinear annotation marks, lone surrogates (they cannot be encoded as UTF-8).
INVISIBLE_RE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]"
)
# What reorders the text around it, and lone surrogates: made visible in every field (`neutral`).
SPOOF_RE = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
NEWLINE_MARK = "\u21b5"  # ↵
TAB_MARK = "\u21e5"  # ⇥
SPACE_MARK = "\u2423"  # ␣


def char_mark(ch: str) -> str:
    """How one invisible character is shown.

    Example: char_mark("\\x07") -> "␇"; char_mark("\\u202e") -> "\\\\u202e"
    """
    if ch == "\n":
        return NEWLINE_MARK
    if ch == "\t":
        return TAB_MARK
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)  # Unicode "control pictures": ␀ .. ␟
    if code == 0x7F:
        return "\u2421"  # ␡
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def _mark_match(m: re.Match[str]) -> str:
    return char_mark(m.group())


def visible(text: str, spaces: bool = False) -> str:
    """One-line display form of a token text: invisible characters become marks.

    Example: visible(" a\\nb\\x07", spaces=True) -> "␣a↵b␇"
    """
    out = INVISIBLE_RE.sub(_mark_match, text)
    return out.replace(" ", SPACE_MARK) if spaces else out


def neutral(text: str) -> str:
    """`text` with its direction controls and lone surrogates shown as marks, all else kept.

    Example: neutral("ok\u202ekaerb") -> "ok\\u202ekaerb"; neutral("a\nb") -> "a\nb"
    """
    return SPOOF_RE.sub(_mark_match, text) if SPOOF_RE.search(text) else text


def esc(text: str) -> str:
    """A user's or model's string for HTML text or an attribute: `neutral`, then escaped.

    Example: esc('<a href="x">\u202e') -> '&lt;a href=&quot;x&quot;&gt;\\u202e'
    """
    return html.escape(neutral(text), quote=True)


def bdi(text: str) -> str:
    """An inline field, isolated from the line around it. Example: bdi("m<1>") -> "<bdi>m&lt;1&gt;</bdi>" """
    return f"<bdi>{esc(text)}</bdi>"


def plotly_text(text: str) -> str:
    """A string for a Plotly label (its HTML-like markup): `neutral`, then escaped.

    Example: plotly_text('<b> & "x"') -> '&lt;b&gt; &amp; "x"'
    """
    return html.escape(neutral(text), quote=False)


@lru_cache(maxsize=1 << 16)
def html_visible(text: str, empty: str = "\u2205") -> str:
    """`visible(text, spaces=True)`, HTML-escaped; cached because top-k texts repeat a lot.

    Example: html_visible(" <b>") -> "␣&lt;b&gt;"; html_visible("") -> "∅"
    """
    return html.escape(visible(text, spaces=True), quote=True) if text else empty


def sub_invisible(text: str, repl: Callable[[str], str]) -> str:
    """Replace each invisible character by repl(char); a no-op fast path for ordinary text.

    Example: sub_invisible("a\\tb", lambda c: "<TAB>") -> "a<TAB>b"
    """
    if not INVISIBLE_RE.search(text):
        return text
    return INVISIBLE_RE.sub(lambda m: repl(m.group()), text)


def spoken(text: str) -> str:
    """A short name for a token text, for aria-labels: whitespace-only tokens get words.

    Example: spoken(" Paris") -> "Paris"; spoken("\\n\\n") -> "2 newlines"
    """
    if text == "":
        return "partial character"
    stripped = visible(text.strip())
    if stripped:
        return stripped
    n = text.count("\n")
    if n:
        return "newline" if n == 1 else f"{n} newlines"
    if "\t" in text:
        return "tab"
    return "space" if len(text) == 1 else f"{len(text)} spaces"


def pct(p: float) -> str:
    """A probability as a percentage that never rounds a real token to 0% or 100%.

    Example: pct(0.951) -> "95.1%"; pct(0.99996) -> ">99.99%"; pct(4.2e-5) -> "0.0042%"
    """
    if math.isnan(p):
        return "nan"
    x = p * 100.0
    if p >= 1.0:
        return "100%"
    if p <= 0.0:
        return "0%"
    if x >= 99.995:
        return ">99.99%"
    if x >= 99.9:
        return f"{x:.2f}%"
    if x >= 0.1:
        return f"{x:.1f}%"
    return f"{x:.2g}%"


def num(x: float, digits: int = 4) -> str:
    """A compact float. Example: num(-0.050172) -> "-0.05017"; num(12.0) -> "12" """
    return f"{x:.{digits}g}"


def entropy_text(low: float, high: float | None, digits: int = 3) -> str:
    """An entropy, or the interval a server's top-k allows (never a made-up single number).

    Example: entropy_text(0.135, None) -> "0.135 nats"; entropy_text(0.1, 0.2) -> "0.1–0.2 nats (top-k only)"
    """
    if high is None:
        return f"{num(low, digits)} nats"
    return f"{num(low, digits)}–{num(high, digits)} nats (top-k only)"


def seconds(s: float) -> str:
    """Example: seconds(1.234) -> "1.23 s"; seconds(0.0042) -> "4.2 ms" """
    return f"{s * 1000:.2g} ms" if s < 0.1 else f"{s:.2f} s"
