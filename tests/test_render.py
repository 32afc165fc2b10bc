"""The rendering layer, on hand-built ScoredTokens (no model): escaping, attributes, cues, figures.

HTML is checked by parsing it back with html.parser, not by string search alone: an unescaped
`<script>` shows up as a start tag, an unescaped quote as a broken attribute.
"""

from __future__ import annotations

import csv
import io
import math
import re
from html.parser import HTMLParser

import pytest

from greedyscore.errors import BadInput
from greedyscore.render import (
    CSS,
    PALETTES,
    View,
    cell_text,
    color_for,
    legend_html,
    page_html,
    parse_top,
    reply_ansi,
    reply_html,
    stats_html,
    text_color,
    token_value,
    tokens_csv,
    tokens_html,
)
from greedyscore.render.chart import confidence_figure, histogram_counts, histogram_figure
from greedyscore.render.colors import _luminance
from greedyscore.render.html import stats_rows, units
from greedyscore.render.text import pct, visible
from greedyscore.types import Alternative, ReplyStats, ScoredReply, ScoredToken, Timings

HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '" onmouseover="alert(1)',
    "' autofocus onfocus='alert(1)",
    "a & b &amp; &lt;",
    "</span></div><b>x",
]


def tok(
    text: str,
    prob: float,
    *,
    id: int = 1,
    special: bool = False,
    top: tuple[Alternative, ...] | None = None,
    entropy: float = 0.5,
    margin: float | None = None,
    rank: int = 1,
    joined: int = 0,
    rescored_prob: float | None = None,
    rescored_rank: int | None = None,
    near_tie: bool = False,
) -> ScoredToken:
    if top is None:
        top = (Alternative(id, text, prob), Alternative(id + 1000, "<alt>", (1 - prob) / 2))
    if margin is None:
        ps = sorted((a.prob for a in top), reverse=True) + [0.0, 0.0]
        margin = ps[0] - ps[1]
    return ScoredToken(
        id=id,
        text=text,
        special=special,
        prob=prob,
        logprob=math.log(prob) if prob > 0 else -math.inf,
        rank=rank,
        entropy=entropy,
        margin=margin,
        top=top,
        joined=joined,
        rescored_prob=rescored_prob,
        rescored_rank=rescored_rank,
        near_tie=near_tie,
    )


def make_reply(tokens: list[ScoredToken], *, verified: bool = False, model: str = "m", **kw) -> ScoredReply:
    lps = [t.logprob for t in tokens] or [0.0]
    mean = sum(lps) / len(lps)
    return ScoredReply(
        model=model,
        backend="transformers",
        text="".join(t.text for t in tokens if not t.special),
        prompt_token_ids=(1, 2, 3),
        tokens=tuple(tokens),
        stats=ReplyStats(len(tokens), mean, math.exp(-mean), math.exp(min(lps))),
        timings=Timings(1.5, 0.02),
        verified=verified,
        **kw,
    )


def sample_reply() -> ScoredReply:
    return make_reply(
        [
            tok("The", 0.62, id=10),
            tok(" capital", 0.95, id=11),
            tok(" of", 0.99, id=12),
            tok(" France", 0.51, id=13, rescored_prob=0.47, rescored_rank=2, near_tie=True),
            tok(" is", 0.97, id=14, rescored_prob=0.97, rescored_rank=1),
            tok(" Paris", 0.08, id=15, entropy=2.4),
            tok(".\n", 0.7, id=16),
            tok("\tx", 0.3, id=17),
            tok("", 0.4, id=18),
            tok("好", 0.9, id=19, joined=1),
            tok("<|im_end|>", 0.93, id=99, special=True),
        ],
        verified=True,
    )


class Doc(HTMLParser):
    """Start tags, and each gs-token's attributes, body text (outside its tooltip) and tooltip text."""

    def __init__(self, source: str):
        super().__init__(convert_charrefs=True)
        self.starts: list[tuple[str, dict[str, str | None]]] = []
        self.tokens: list[dict] = []
        self.stack: list[str] = []  # "token" | "tip" | "other", one per open element
        self.feed(source)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.starts.append((tag, a))
        if tag in ("br", "meta"):
            return
        classes = (a.get("class") or "").split()
        if "gs-token" in classes:
            self.tokens.append({"attrs": a, "classes": classes, "body": "", "tip": ""})
            self.stack.append("token")
        elif "gs-tip" in classes:
            self.stack.append("tip")
        else:
            self.stack.append("other")

    def handle_endtag(self, tag):
        if tag not in ("br", "meta"):
            self.stack.pop()

    def handle_data(self, data):
        if "token" not in self.stack:
            return
        where = "tip" if "tip" in self.stack else "body"
        self.tokens[-1][where] += data


def unmark(body: str) -> str:
    """A token body's display text back to the token text (newline/tab marks are followed by the real char)."""
    return body.replace("\u21b5\n", "\n").replace("\u21e5\t", "\t")


# --- escaping -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_strings_never_reach_html_unescaped(bad):
    tokens = [
        tok(bad, 0.2, id=1, top=(Alternative(1, bad, 0.2), Alternative(2, bad + "!", 0.1))),
        tok(" ok", 0.9, id=3, top=(Alternative(4, bad, 0.05), Alternative(3, " ok", 0.9))),
        tok(bad, 0.6, id=5, special=True, rescored_prob=0.55, rescored_rank=2, near_tie=True),
    ]
    reply = make_reply(tokens, model=bad, notes=(bad,), verified=True)
    for out in (reply_html(reply), stats_html(reply), page_html(reply)):
        doc = Doc(out)
        tags = {tag for tag, _ in doc.starts}
        assert not tags & {"script", "img", "b", "i"}, tags
        for _, attrs in doc.starts:
            assert not [k for k in attrs if k.startswith("on") or k == "autofocus"], attrs
        assert bad not in out or not any(c in bad for c in "<>\"'&")
    doc = Doc(reply_html(reply))
    assert len(doc.tokens) == 3
    for t, parsed in zip(tokens, doc.tokens, strict=True):
        assert unmark(parsed["body"]) == t.text  # text round-trips through escaping
        assert visible(bad, spaces=True) in parsed["tip"]  # token or alternative text, in the tooltip
    assert doc.tokens[0]["attrs"]["aria-label"] == f"{bad.strip()}, 20.0%"  # attributes round-trip
    assert doc.tokens[2]["attrs"]["aria-label"] == f"{bad.strip()}, 60.0%, near tie"


def test_text_content_round_trips_to_the_reply_text():
    reply = sample_reply()
    doc = Doc(reply_html(reply))
    assert "".join(unmark(p["body"]) for p in doc.tokens if "gs-special" not in p["classes"]) == reply.text


def test_control_characters_are_shown_not_emitted():
    reply = make_reply([tok("a\x07b\x1b[31m\u202ez\x00", 0.5)])
    out = reply_html(reply)
    for raw in "\x07\x1b\u202e\x00":
        assert raw not in out
    assert "\u2407" in out and "\u241b" in out and "\\u202e" in out
    ansi = reply_ansi(reply)
    assert "\x1b[31m" not in ansi and "\u241b[31m" in ansi
    assert "\x07" not in reply_ansi(reply, use_color=False)


# --- token elements ---------------------------------------------------------------------------


def test_every_token_gets_an_element_with_its_numbers():
    """One element per token, except a character split over byte tokens: one element for all of them."""
    reply = sample_reply()
    doc = Doc(reply_html(reply))
    runs = units(reply.tokens)
    assert runs[8] == (8, 10) and all(b - a == 1 for a, b in runs[:8] + runs[9:])
    assert len(doc.tokens) == len(runs) == len(reply.tokens) - 1
    for (start, stop), p in zip(runs, doc.tokens, strict=True):
        a, parts = p["attrs"], reply.tokens[start:stop]
        assert a["tabindex"] == "0" and int(a["data-i"]) == start
        assert a["data-id"] == " ".join(str(t.id) for t in parts)
        joint = math.prod(t.prob for t in parts)
        assert float(a["data-prob"]) == pytest.approx(joint, rel=1e-12)
        assert a["style"].startswith(f"background:{color_for(joint)}")
        if stop - start == 1:
            t = parts[0]
            for name in ("logprob", "entropy", "margin"):
                assert float(a[f"data-{name}"]) == pytest.approx(getattr(t, name), rel=1e-12)
            assert int(a["data-rank"]) == t.rank
        else:
            assert int(a["data-n"]) == stop - start and p["body"] == "好"


def test_a_split_character_is_one_unit_listing_each_fragment():
    parts = [tok("", 0.5, id=7, top=(Alternative(7, "\\xe4\\xbd", 0.5), Alternative(8, "x", 0.2))),
             tok("你", 0.8, id=9, joined=1, top=(Alternative(9, "\\xa0", 0.8), Alternative(3, "y", 0.1)))]
    doc = Doc(tokens_html(parts + [tok("!", 0.9, id=5)]))
    unit = doc.tokens[0]
    assert "gs-unit" in unit["classes"] and "gs-cont" not in unit["classes"] and unit["body"] == "你"
    assert unit["attrs"]["aria-label"] == "你, 2 tokens, 40.0%"
    tip = unit["tip"]
    for text in ("2 tokens", "40.0%", "fragment 1 of 2: \\xe4\\xbd", "50.0%", "fragment 2 of 2: \\xa0", "80.0%",
                 "id 7", "id 9"):
        assert text in tip, text
    for mode in ("margin", "entropy"):  # the least confident fragment colours the unit
        low = min(token_value(t, mode) for t in parts)
        style = Doc(tokens_html(parts, View(mode))).tokens[0]["attrs"]["style"]
        assert style.startswith(f"background:{color_for(low)}")


def test_alternatives_are_fork_buttons_when_asked():
    tokens = [tok("The", 0.6, id=1), tok(" cat", 0.5, id=2, top=(Alternative(2, " cat", 0.5),
                                                                   Alternative(3, " dog", 0.3)))]
    plain = Doc(tokens_html(tokens))
    assert not [a for tag, a in plain.starts if tag == "button"]
    doc = Doc(tokens_html(tokens, fork=True))
    buttons = [a for tag, a in doc.starts if tag == "button"]
    assert [(b["data-at"], b["data-token"]) for b in buttons] == [("0", "1001"), ("1", "3")]  # never the chosen one
    assert buttons[1]["aria-label"] == "continue with dog (30.0%) instead" and "gs-fork" in buttons[1]["class"]


def test_a_forks_shared_prefix_is_dimmed_and_the_divergence_marked():
    tokens = [tok(w, 0.9, id=i) for i, w in enumerate(["a", " b", " c", " d"])]
    doc = Doc(tokens_html(tokens, shared_until=2))
    marks = [("gs-shared" in p["classes"], "gs-diverge" in p["classes"]) for p in doc.tokens]
    assert marks == [(True, False), (True, False), (False, True), (False, False)]


def test_aria_label_format():
    doc = Doc(tokens_html([tok(" Paris", 0.951), tok("\n", 0.5), tok("", 0.2)]))
    labels = [p["attrs"]["aria-label"] for p in doc.tokens]
    assert labels == ["Paris, 95.1%", "newline, 50.0%", "partial character, 20.0%"]


def test_newline_tab_and_space_render_visibly_and_faithfully():
    out = tokens_html([tok("a\n", 0.9), tok("\tb  c", 0.9)])
    assert '\u21b5</span>\n<span class="gs-tip"' in out  # marker, then a real line break
    assert "\u21e5</span>\t" in out
    assert "b  c" in out  # spaces kept (pre-wrap)
    assert "white-space: pre-wrap" in CSS


def test_special_low_near_tie_and_continuation_classes():
    reply = sample_reply()
    doc = Doc(reply_html(reply, View(threshold=0.5)))
    classes = {p["attrs"]["data-i"]: set(p["classes"]) for p in doc.tokens}
    assert "gs-special" in classes["10"] and "gs-special" not in classes["0"]
    assert "gs-low" in classes["5"] and "gs-low" in classes["7"] and "gs-low" not in classes["1"]
    assert "gs-near-tie" in classes["3"] and "gs-near-tie" not in classes["4"]
    assert "gs-unit" in classes["8"]
    tip3 = doc.tokens[3]["tip"]
    assert "near tie: rescoring the whole sequence gives 47.0% (rank 2)" in tip3
    assert "batched/cached arithmetic can flip the argmax" in tip3
    assert "fragment 2 of 2" in doc.tokens[8]["tip"]


def test_near_tie_needs_a_rescored_probability():
    doc = Doc(tokens_html([tok("x", 0.5, near_tie=True)]))
    assert "gs-near-tie" not in doc.tokens[0]["classes"]


def test_threshold_follows_the_colour_mode():
    t = tok("x", 0.9, entropy=2.0, margin=0.05)
    for mode, low in (("prob", False), ("margin", True), ("entropy", True)):
        doc = Doc(tokens_html([t], View(mode, threshold=0.5)))
        assert ("gs-low" in doc.tokens[0]["classes"]) is low, mode


def test_tooltip_shows_numbers_and_marks_the_chosen_alternative():
    t = tok(" Paris", 0.951, id=7, top=(Alternative(7, " Paris", 0.951), Alternative(8, " Lyon", 0.02)), entropy=0.25)
    out = tokens_html([t])
    tip = Doc(out).tokens[0]["tip"]
    for s in ("95.1%", "logprob -0.05024", "entropy 0.25 nats", "margin 93.1%", "rank 1", "\u2423Lyon", "2.0%"):
        assert s in tip, s
    assert out.count("gs-chosen") == 1 and '<span class="gs-alt gs-chosen"><span class="gs-alt-t">\u2423Paris' in out


def test_chosen_token_outside_top_k_is_still_shown():
    t = tok("z", 0.01, id=5, rank=40, top=(Alternative(1, "a", 0.5), Alternative(2, "b", 0.3)))
    out = tokens_html([t])
    assert "rank 40" in out and out.count("gs-chosen") == 1


def test_empty_reply_renders():
    reply = make_reply([])
    assert "no tokens" in reply_html(reply)
    assert "<table" in stats_html(reply)
    assert len(confidence_figure(reply.tokens).data[0].y) == 0
    assert sum(histogram_figure(reply.tokens).data[0].y) == 0


def test_unknown_mode_or_palette_is_a_bad_input():
    with pytest.raises(BadInput):
        reply_html(sample_reply(), View(color_by="rank"))
    with pytest.raises(BadInput):
        tokens_html([tok("x", 0.5)], View(palette="rainbow"))


# --- legend and stats -------------------------------------------------------------------------


def test_legend_has_ticks_threshold_and_meaning():
    out = legend_html(View("prob", "cividis", 0.5))
    for s in ("0%", "50%", "100%", "probability &lt; 50%", "linear-gradient", "near tie", "special"):
        assert s in out, s
    assert "nats" in legend_html(View("entropy", "cividis", 0.5))
    assert legend_html(View("prob")) in reply_html(sample_reply())


def test_stats_html_numbers():
    reply = sample_reply()
    out = stats_html(reply, View("prob", threshold=0.5))
    doc = Doc(out)
    text = "".join(data for data in _texts(out))
    assert str(len(reply.tokens)) in text
    assert f"{reply.stats.perplexity:.4g}" in text and f"{reply.stats.mean_logprob:.4g}" in text
    assert pct(reply.stats.min_prob) in text
    assert "below threshold (by probability)" in text and "3 (probability < 50%)" in text  # 0.08, 0.3, 0.4
    assert "1 of 11" in text  # one near tie
    assert len([a for tag, a in doc.starts if "gs-chip" in (a.get("class") or "")]) == 5
    assert text.index("\u2423Paris 8.0%") < text.index("\u21e5x 30.0%")  # least confident first
    assert "not verified" in "".join(_texts(stats_html(make_reply([tok("a", 0.5)]))))


def _texts(source: str) -> list[str]:
    out: list[str] = []
    p = HTMLParser(convert_charrefs=True)
    p.handle_data = out.append  # type: ignore[method-assign]
    p.feed(source)
    return out


# --- colours ----------------------------------------------------------------------------------


@pytest.mark.parametrize("palette", list(PALETTES))
def test_palette_endpoints_differ_and_text_stays_readable(palette):
    lo, hi = color_for(0.0, palette), color_for(1.0, palette)
    assert lo != hi and lo.startswith("#") and len(lo) == 7
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        bg = color_for(v, palette)
        lum_bg, lum_fg = _luminance(bg), _luminance(text_color(bg))
        hi_l, lo_l = max(lum_bg, lum_fg), min(lum_bg, lum_fg)
        assert (hi_l + 0.05) / (lo_l + 0.05) >= 4.5  # WCAG AA


@pytest.mark.parametrize("palette", ["cividis", "viridis"])
def test_sequential_palettes_are_monotone_in_lightness(palette):
    lums = [_luminance(color_for(i / 50, palette)) for i in range(51)]
    assert all(b >= a - 1e-9 for a, b in zip(lums, lums[1:], strict=False))
    assert lums[-1] > lums[0] + 0.5  # low confidence is the dark end: it stands out


def test_token_value_is_monotone_in_confidence():
    probs = [token_value(tok("x", p), "prob") for p in (0.01, 0.2, 0.5, 0.99)]
    assert probs == sorted(probs)
    ents = [token_value(tok("x", 0.5, entropy=h), "entropy") for h in (0.0, 0.5, 1.5, 3.0, 9.0)]
    assert ents == sorted(ents, reverse=True) and ents[0] == 1.0 and ents[-1] == 0.0
    assert token_value(tok("x", 0.5, margin=0.3), "margin") == 0.3


# --- figures ----------------------------------------------------------------------------------


def test_confidence_figure_one_bar_per_token():
    reply = sample_reply()
    tokens = list(reply.tokens) + [tok(" of", 0.99, id=12)]  # a duplicate text must not merge bars
    fig = confidence_figure(tokens, View("prob", "cividis", 0.4))
    bar, line = fig.data
    assert bar.type == "bar" and len(bar.y) == len(tokens) and list(bar.x) == list(range(len(tokens)))
    assert list(bar.y) == pytest.approx([t.prob for t in tokens])
    assert list(line.y) == pytest.approx([t.entropy for t in tokens]) and line.yaxis == "y2"
    shapes = [s for s in fig.layout.shapes if s.name == "threshold"]
    assert len(shapes) == 1 and shapes[0].y0 == shapes[0].y1 == 0.4
    assert bar.marker.colorbar is not None and bar.marker.cmin == 0 and bar.marker.cmax == 1
    ticktext = list(fig.layout.xaxis.ticktext)
    assert "\u2423capital" in ticktext and "\u21b5" in ticktext[6]


def test_figure_hover_and_ticks_are_escaped():
    bad = "<img src=x onerror=alert(1)>"
    fig = confidence_figure([tok(bad, 0.5, top=(Alternative(1, bad, 0.5), Alternative(2, "<b>", 0.2)))])
    cells = [str(c) for row in fig.data[0].customdata for c in row] + list(fig.layout.xaxis.ticktext)
    assert all("<img" not in c and "<b>" not in c for c in cells)
    assert any("&lt;img" in c for c in cells) and any("&lt;b&gt;" in c for c in cells)


def test_histogram_counts_every_token():
    probs = [0.0, 0.04, 0.5, 0.51, 0.99, 1.0]
    assert histogram_counts(probs, bins=2) == [2, 4]
    fig = histogram_figure([tok("x", p) for p in probs if p > 0], View(threshold=0.5))
    assert sum(fig.data[0].y) == 5 and len(fig.data[0].y) == 20
    assert [s.x0 for s in fig.layout.shapes if s.name == "threshold"] == [0.5]


def _mixed_tokens() -> list[ScoredToken]:
    """Confident by probability but close calls by margin, and the other way round."""
    return [tok("a", 0.55, margin=0.10, entropy=2.5), tok("b", 0.95, margin=0.92, entropy=0.2),
            tok("c", 0.30, margin=0.29, entropy=0.4), tok("d", 0.50, margin=0.02, entropy=1.5)]


@pytest.mark.parametrize("mode", ["prob", "margin", "entropy"])
@pytest.mark.parametrize("palette", list(PALETTES))
def test_histogram_follows_the_colour_mode_and_palette(mode, palette):
    tokens = _mixed_tokens()
    fig = histogram_figure(tokens, View(mode, palette, 0.5))
    bar = fig.data[0]
    assert list(bar.y) == histogram_counts([token_value(t, mode) for t in tokens], 20)
    assert list(bar.marker.color) == [color_for(x, palette) for x in bar.x]
    assert list(fig.layout.xaxis.ticktext)[0] == ("\u22653.0" if mode == "entropy" else "0%")


@pytest.mark.parametrize("mode,below,worst", [("prob", 1, "c"), ("margin", 3, "d"), ("entropy", 2, "a")])
def test_stats_follow_the_colour_mode(mode, below, worst):
    reply = make_reply(_mixed_tokens())
    rows = dict(stats_rows(reply, View(mode, "cividis", 0.5)))
    label = {"prob": "probability", "margin": "margin", "entropy": "entropy"}[mode]
    assert rows[f"below threshold (by {label})"].startswith(f"{below} (")
    first_chip = _texts(rows[f"least confident (by {label})"])[0]
    assert first_chip.startswith(f"{worst} ")
    if mode == "margin":
        assert first_chip == "d margin 2.0%"
    if mode == "entropy":
        assert first_chip == "a 2.5 nats"


def test_two_thousand_tokens_render_as_one_element_each_and_one_trace():
    """Long replies stay a flat list of spans and a single bar trace (timings: benchmarks/bench_render.py)."""
    tokens = []
    for i in range(2000):
        p = 0.01 + 0.98 * ((i * 37) % 100) / 100  # spread over (0, 1), some below the threshold
        top = tuple(Alternative(i * 10 + k, f" w{k}<", p / (k + 1)) for k in range(5))
        tokens.append(tok(" word\n" if i % 50 == 0 else " word", p, id=i * 10, top=top))
    reply = make_reply(tokens)
    page = reply_html(reply)
    assert len(re.findall(r'class="gs-token[ "]', page)) == 2000
    fig = confidence_figure(reply.tokens)
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 1 and len(bars[0].y) == 2000


# --- terminal and CSV -------------------------------------------------------------------------


def test_terminal_output_has_every_token_a_legend_and_stats():
    reply = sample_reply()
    out = reply_ansi(reply)
    for t in reply.tokens:
        for piece in t.text.split("\n"):
            assert piece in out
    assert "\x1b[48;2;" in out and "probability of the chosen token" in out and "perplexity" in out
    assert "\u21b5\x1b[0m\n" in out  # colour closed before the line break
    plain = reply_ansi(reply, use_color=False)
    assert "\x1b" not in plain
    assert "[\u2423capital|95.0%]" not in plain and "[ capital|95.0%]" in plain
    assert "[[ Paris|8.0%]]" in plain and "{<|im_end|>|93.0%}" in plain and "legend:" in plain


def csv_rows(text: str) -> list[list[str]]:
    """The CSV read back as csv's documentation says to read a file: newline=""."""
    return list(csv.reader(io.StringIO(text, newline="")))


def test_csv_round_trips():
    reply = sample_reply()
    rows = csv_rows(tokens_csv(reply))
    header, body = rows[0], rows[1:]
    assert header[:10] == ["index", "id", "text", "special", "prob", "logprob", "rank", "entropy", "margin", "top"]
    assert header[10:] == ["rescored_prob", "rescored_rank", "near_tie"]
    assert len(body) == len(reply.tokens)
    for row, t in zip(body, reply.tokens, strict=True):
        rec = dict(zip(header, row, strict=True))
        assert cell_text(rec["text"]) == t.text and int(rec["id"]) == t.id and rec["special"] == str(int(t.special))
        assert float(rec["prob"]) == t.prob and float(rec["logprob"]) == t.logprob
        assert parse_top(cell_text(rec["top"])) == [(a.text, a.prob) for a in t.top]


@pytest.mark.parametrize("text", ["a|b", "c:d", "e\\|f", 'x,y\n"z"', "", "|"])
def test_csv_top_field_escapes_separators(text):
    t = tok(text, 0.5, top=(Alternative(1, text, 0.5), Alternative(2, "ok", 0.25)))
    rows = csv_rows(tokens_csv(make_reply([t])))
    assert rows[1][2] == text and parse_top(rows[1][9]) == [(text, 0.5), ("ok", 0.25)]


FORMULAS = ["=1+1", "=HYPERLINK(\"http://x\",\"y\")", "+1", "-1", "-", "@SUM(A1)", "\tx", "\r", "\r=1", "'=1", "'"]


@pytest.mark.parametrize("text", FORMULAS)
def test_csv_cells_never_start_a_formula(text):
    """OWASP's CSV injection starts (=, +, -, @, tab, CR) never begin a text cell, in the text or the
    alternatives column; the text comes back exactly; the numbers stay plain numbers, minus signs
    and all."""
    t = tok(text, 0.25, top=(Alternative(5, text, 0.5), Alternative(1, text, 0.25)), margin=0.25)
    reply = make_reply([t, tok("-", 0.125, id=2, top=(Alternative(2, "-", 0.125),))])
    header, *body = csv_rows(tokens_csv(reply))
    for row in body:
        rec = dict(zip(header, row, strict=True))
        for cell in (rec["text"], rec["top"]):
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
        assert float(rec["logprob"]) < 0 and rec["logprob"].startswith("-")  # a number, not text
    first = dict(zip(header, body[0], strict=True))
    assert cell_text(first["text"]) == text and float(first["logprob"]) == t.logprob
    assert parse_top(cell_text(first["top"])) == [(text, 0.5), (text, 0.25)]


CONTROLS = [chr(c) for c in (*range(32), 0x7F, 0x85, 0x2028, 0x2029)]


def test_csv_reads_back_one_row_per_token_for_every_control_character(tmp_path):
    """A lone "\r" is a real token of the model; every control character, alone, leading, inside
    and trailing, in the text and in the alternatives: one row per token, texts exact, also from
    the file the download writes."""
    from greedyscore.exports import Exports

    texts = [t for c in CONTROLS for t in (c, c + "a", "a" + c + "b", "b" + c)] + ["\r\n", "\n\r", "\r\r"]
    tokens = [tok(text, 0.5, id=i, top=(Alternative(i, text, 0.5), Alternative(0, "x" + text, 0.25)))
              for i, text in enumerate(texts)]
    reply = make_reply(tokens)
    _, path = Exports(tmp_path).write(reply)
    with open(path, encoding="utf-8", newline="") as f:
        from_file = list(csv.reader(f))
    for header, *body in (csv_rows(tokens_csv(reply)), from_file):
        assert len(body) == len(tokens)
        for row, t in zip(body, tokens, strict=True):
            rec = dict(zip(header, row, strict=True))
            assert int(rec["index"]) == t.id and cell_text(rec["text"]) == t.text
            assert parse_top(cell_text(rec["top"])) == [(t.text, 0.5), ("x" + t.text, 0.25)]


def test_render_outputs_draw_everything_in_the_chosen_view():
    """What the UI shows for a reply: the tokens, the chart, the histogram and the stats all
    follow the same colour mode and palette."""
    from greedyscore.render import render_outputs

    reply = make_reply(_mixed_tokens())
    page, fig, hist, stats = render_outputs(reply, View.make("margin (p1 − p2)", "viridis", 0.5))
    assert "Colour: margin: top-1 minus top-2 probability" in "".join(_texts(page))
    assert list(fig.data[0].y) == pytest.approx([t.margin for t in reply.tokens])
    assert list(hist.data[0].y) == histogram_counts([t.margin for t in reply.tokens], 20)
    assert list(hist.data[0].marker.color) == [color_for(x, "viridis") for x in hist.data[0].x]
    assert "least confident (by margin)" in "".join(_texts(stats))


@pytest.mark.parametrize("threshold", ["abc", None, True, float("nan"), 1.5, -0.1, [0.5]])
def test_view_rejects_a_bad_threshold_as_an_input_error(threshold):
    with pytest.raises(BadInput, match="threshold must be a number between 0 and 1"):
        View.make("probability", "cividis", threshold)


def test_view_takes_labels_or_mode_names():
    assert View.make("probability", "cividis", "0.25") == View("prob", "cividis", 0.25)
    assert View.make("entropy", "red-green", 1) == View("entropy", "red-green", 1.0)
    with pytest.raises(BadInput, match="colour mode"):
        View.make("rank", "cividis", 0.5)
    with pytest.raises(BadInput, match="palette"):
        View.make("prob", 3, 0.5)


def test_an_entropy_interval_is_shown_as_one_never_as_a_number():
    """A remote server's top-k only: tooltip, chart band, CSV column, JSON key; colour by the upper end."""
    from dataclasses import replace

    from greedyscore.render.html import tooltip_html

    exact = tok("a", 0.6, entropy=0.9)
    interval = replace(tok("b", 0.6, id=2, entropy=0.9), entropy_max=2.4)
    reply = make_reply([exact, interval])
    tips = [tooltip_html(t) for t in reply.tokens]
    assert "0.9 nats" in tips[0] and "top-k only" not in tips[0]
    assert "0.9\u20132.4 nats (top-k only)" in tips[1]
    assert token_value(interval, "entropy") < token_value(exact, "entropy")  # the least confident it can be
    names = [trace.name for trace in confidence_figure(reply.tokens).data]
    assert any("upper bound" in (n or "") for n in names)
    assert len(confidence_figure((exact,)).data) == 2  # bars and the entropy line, no band
    rows = list(csv.DictReader(io.StringIO(tokens_csv(reply))))
    assert [r["entropy_max"] for r in rows] == ["", "2.4"]
    assert "entropy_max" not in reply.to_json()["tokens"][0] and reply.to_json()["tokens"][1]["entropy_max"] == 2.4


# --- the map above a long reply ---------------------------------------------------------------


def _long_tokens(n: int, texts: list[str] | None = None) -> list[ScoredToken]:
    """n tokens with spread numbers, a special token and split characters (a "" fragment, then its
    character) among them."""
    out: list[ScoredToken] = []
    for i in range(n):
        p = 0.02 + 0.96 * ((i * 53) % 97) / 97
        text = texts[i % len(texts)] if texts else f" w{i}"
        if i % 29 == 5:
            out.append(tok("", p, id=i, margin=p / 2, entropy=3 * (1 - p)))
        elif i % 29 == 6 and out[-1].text == "":
            out.append(tok("好", p, id=i, joined=1, margin=p / 3, entropy=2 * (1 - p)))
        else:
            out.append(tok(text, p, id=i, special=i == n - 1, margin=p * 0.8, entropy=2.9 * (1 - p) ** 2))
    return out


def _map_cells(out: str) -> list[dict[str, str | None]]:
    return [a for tag, a in Doc(out).starts if tag == "span" and "data-k" in a]


def _background(style: str | None) -> str:
    m = re.search(r"background:(#[0-9a-f]{6})", style or "")
    assert m, style
    return m.group(1)


def test_a_map_above_a_long_reply_only():
    for n, shown in ((80, False), (81, True), (300, True)):
        out = tokens_html(_long_tokens(n), View())
        assert ('class="gs-map"' in out) == shown, n
        assert len(_map_cells(out)) == (n if shown else 0)
        assert [int(a["data-k"]) for a in _map_cells(out)] == (list(range(n)) if shown else [])
    assert 'class="gs-map"' not in tokens_html(_long_tokens(300), View(), token_map=False)
    assert 'class="gs-map"' in reply_html(make_reply(_long_tokens(81)))
    strip = next(a for tag, a in Doc(tokens_html(_long_tokens(81))).starts if "gs-map-cells" in (a.get("class") or ""))
    assert strip["tabindex"] == "0" and strip["aria-valuemax"] == "80"


@pytest.mark.parametrize("mode", ["prob", "margin", "entropy"])
@pytest.mark.parametrize("palette", list(PALETTES))
def test_map_cells_take_the_colours_of_the_token_spans(mode, palette):
    """Each cell's colour is the colour of the span that draws its token (a split character's
    span covers data-n tokens), read back from the reply's own HTML."""
    tokens = _long_tokens(120)
    out = tokens_html(tokens, View(mode, palette, 0.5))
    spans: list[str] = []
    for t in Doc(out).tokens:
        spans += [_background(t["attrs"]["style"])] * int(t["attrs"].get("data-n") or 1)
    assert len(spans) == len(tokens) and any(t["attrs"].get("data-n") for t in Doc(out).tokens)
    assert [_background(a["style"]) for a in _map_cells(out)] == spans


@pytest.mark.parametrize("bad", [*HOSTILE, "ok\u202ekaerb", "a\nb\x07"])
def test_hostile_token_texts_in_map_titles_stay_text(bad):
    out = tokens_html(_long_tokens(90, [bad, " fine"]), View())
    doc = Doc(out)
    assert not {tag for tag, _ in doc.starts} & {"script", "img", "b", "i"}
    for _, attrs in doc.starts:
        assert not [k for k in attrs if k.startswith("on") or k == "autofocus"], attrs
    titles = [a["title"] for a in _map_cells(out)]
    assert titles[0] == f"0: {visible(bad, spaces=True)} {pct(0.02)}"
    assert "\u202e" not in out and "\x07" not in out


def _brute_force_runs(values: list[float], threshold: float) -> list[tuple[int, int, float]]:
    """Every maximal interval of values below the threshold, found by trying all of them."""
    n, found = len(values), []
    for a in range(n):
        for b in range(a + 1, n + 1):
            inside = all(v < threshold for v in values[a:b])
            maximal = (a == 0 or values[a - 1] >= threshold) and (b == n or values[b] >= threshold)
            if inside and maximal:
                found.append((a, b, math.fsum(threshold - v for v in values[a:b])))
    return sorted(found, key=lambda r: (-r[2], r[0]))


@pytest.mark.parametrize("seed", range(20))
def test_the_lowest_runs_are_the_brute_force_ones_and_the_map_marks_them(seed):
    import random

    from greedyscore.render.map import lowest_runs

    rng = random.Random(seed)
    values = [rng.random() ** rng.choice((0.5, 1, 2)) for _ in range(rng.randint(81, 140))]
    threshold = rng.uniform(0.2, 0.8)
    expected = _brute_force_runs(values, threshold)[:3]
    runs = lowest_runs(values, threshold, 3)
    assert [(r.start, r.stop) for r in runs] == [(a, b) for a, b, _ in expected]
    assert [r.shortfall for r in runs] == pytest.approx([s for _, _, s in expected])
    assert [r.lowest for r in runs] == [min(values[a:b]) for a, b, _ in expected]
    tokens = [tok(f" t{i}", v, id=i) for i, v in enumerate(values)]  # probability = the value
    out = tokens_html(tokens, View("prob", "cividis", threshold))
    marked = [int(a["data-k"]) for a in _map_cells(out) if a.get("class") == "gs-map-run"]
    assert marked == sorted(i for a, b, _ in expected for i in range(a, b))
    jumps = [int(a["data-k"]) for tag, a in Doc(out).starts if tag == "button" and "data-k" in a]
    assert jumps == [a for a, _, _ in expected]


def test_no_run_below_a_zero_threshold():
    out = tokens_html(_long_tokens(100), View("prob", "cividis", 0.0))
    assert "no token below the threshold" in out and 'class="gs-map-run"' not in out
