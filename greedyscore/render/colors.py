"""Colour scales: one number per token in [0, 1] (0 = least confident) -> a colour.

Colour-by modes (all map "low confidence" to 0, so one palette and one threshold serve all):
- "prob":    the chosen token's probability.
- "margin":  p_top1 - p_top2; near 0 when two tokens almost tie.
- "entropy": 1 - H / ENTROPY_CAP, H in nats over the full vocabulary; H >= ln 20 (as spread as
             a uniform choice among 20 tokens) counts as fully uncertain.
Greedy decoding makes every token rank 1, so rank buckets (GLTR) say nothing here.

Palettes are sequential and interpolated in RGB between fixed stops, the same stops the Plotly
chart gets, so the HTML, the chart and the terminal agree. "cividis" (default) and "viridis" stay
readable with colour-vision deficiencies; low confidence is the dark end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

from ..errors import BadInput
from ..types import ScoredToken
from .text import entropy_text, pct

MODES: tuple[str, ...] = ("prob", "margin", "entropy")
MODE_LABELS: dict[str, str] = {
    "prob": "probability of the chosen token",
    "margin": "margin: top-1 minus top-2 probability",
    "entropy": "entropy of the next-token distribution (nats)",
}
MODE_SHORT: dict[str, str] = {"prob": "probability", "margin": "margin", "entropy": "entropy"}
ENTROPY_CAP = math.log(20)  # nats; at or above this a step counts as fully uncertain

PALETTES: dict[str, tuple[str, ...]] = {  # evenly spaced stops, low confidence first
    "cividis": ("#00224e", "#123570", "#3b496c", "#575d6d", "#707173",
                "#8a8678", "#a59c74", "#c3b369", "#e1cc55", "#fee838"),
    "viridis": ("#440154", "#482878", "#3e4989", "#31688e", "#26828e",
                "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"),
    "red-green": ("#a50026", "#d73027", "#f46d43", "#fdae61", "#fee08b", "#ffffbf",
                  "#d9ef8b", "#a6d96a", "#66bd63", "#1a9850", "#006837"),
}  # fmt: skip
DEFAULT_PALETTE = "cividis"
LUT_SIZE = 256


def check_mode(mode: str) -> str:
    """Example: check_mode("prob") -> "prob"; check_mode("rank") raises BadInput."""
    if mode not in MODES:
        raise BadInput(f"unknown colour mode {mode!r}: use one of {', '.join(MODES)}")
    return mode


def check_palette(palette: str) -> str:
    """Example: check_palette("cividis") -> "cividis"."""
    if palette not in PALETTES:
        raise BadInput(f"unknown palette {palette!r}: use one of {', '.join(PALETTES)}")
    return palette


def token_value(t: ScoredToken, mode: str = "prob") -> float:
    """The token's confidence in [0, 1] under a colour mode (0 = least confident).

    Example: token_value(t, "entropy") -> 1.0 when t.entropy == 0

    Where only a server's top-k was known, entropy colours by the interval's upper end: the
    least confident the step can have been.
    """
    if check_mode(mode) == "prob":
        v = t.prob
    elif mode == "margin":
        v = t.margin
    else:
        v = 1.0 - (t.entropy if t.entropy_max is None else t.entropy_max) / ENTROPY_CAP
    return 0.0 if math.isnan(v) else min(1.0, max(0.0, v))


def unit_value(parts: Sequence[ScoredToken], mode: str = "prob") -> float:
    """A multi-token character's confidence: the product of its fragments' probabilities (the
    character's probability), or under margin/entropy its least confident fragment.

    Example: unit_value([t(p=0.5), t(p=0.8)], "prob") -> 0.4
    """
    if check_mode(mode) == "prob":
        return math.exp(sum(t.logprob for t in parts))
    return min(token_value(t, mode) for t in parts)


def measure_text(t: ScoredToken, mode: str = "prob") -> str:
    """A token's number under a colour mode, in that mode's units.

    Example: measure_text(t, "prob") -> "42.0%"; measure_text(t, "margin") -> "margin 3.2%"
    """
    if check_mode(mode) == "entropy":
        return entropy_text(t.entropy, t.entropy_max)
    if mode == "margin":
        return f"margin {pct(t.margin)}"
    return pct(t.prob)


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return int(hex_color[1:3], 16), int(hex_color[3:5], 16), int(hex_color[5:7], 16)


def interpolate(stops: tuple[str, ...], x: float) -> str:
    """Linear RGB interpolation between evenly spaced stops.

    Example: interpolate(("#000000", "#ffffff"), 0.5) -> "#808080"
    """
    x = min(1.0, max(0.0, x)) * (len(stops) - 1)
    i = min(int(x), len(stops) - 2)
    f = x - i
    a, b = _rgb(stops[i]), _rgb(stops[i + 1])
    r, g, bl = (round(ca + (cb - ca) * f) for ca, cb in zip(a, b, strict=True))
    return f"#{r:02x}{g:02x}{bl:02x}"


@cache
def _lut(palette: str) -> tuple[str, ...]:
    stops = PALETTES[check_palette(palette)]
    return tuple(interpolate(stops, i / (LUT_SIZE - 1)) for i in range(LUT_SIZE))


def color_for(value01: float, palette: str = DEFAULT_PALETTE) -> str:
    """Background colour for a confidence in [0, 1] (clamped; NaN counts as 0).

    Example: color_for(0.0) -> "#00224e"; color_for(1.0) -> "#fee838"
    """
    v = 0.0 if math.isnan(value01) else min(1.0, max(0.0, value01))
    return _lut(palette)[round(v * (LUT_SIZE - 1))]


def _luminance(hex_color: str) -> float:
    """WCAG relative luminance."""

    def lin(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = _rgb(hex_color)
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)


@cache
def text_color(background: str) -> str:
    """Black or white, whichever contrasts more with the background (WCAG ratio).

    Example: text_color("#00224e") -> "#ffffff"; text_color("#fee838") -> "#000000"
    """
    lum = _luminance(background)
    return "#000000" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "#ffffff"


def plotly_colorscale(palette: str = DEFAULT_PALETTE) -> list[list[float | str]]:
    """The palette as a Plotly colorscale (same stops as color_for).

    Example: plotly_colorscale("cividis")[0] -> [0.0, "#00224e"]
    """
    stops = PALETTES[check_palette(palette)]
    return [[i / (len(stops) - 1), c] for i, c in enumerate(stops)]


def ticks(mode: str = "prob") -> list[tuple[float, str]]:
    """(position in [0, 1], label) for a legend or colorbar, in the mode's own units.

    Example: ticks("prob")[2] -> (0.5, "50%"); ticks("entropy")[0] -> (0.0, "≥3.0")
    """
    check_mode(mode)
    pos = (0.0, 0.25, 0.5, 0.75, 1.0)
    if mode == "entropy":
        labels = [f"{(1 - p) * ENTROPY_CAP:.1f}" for p in pos]
        labels[0] = "\u2265" + labels[0]
        return list(zip(pos, labels, strict=True))
    return [(p, f"{p * 100:.0f}%") for p in pos]


def value_text(mode: str, value01: float) -> str:
    """A confidence value in the mode's units (for threshold captions).

    Example: value_text("prob", 0.5) -> "50%"; value_text("entropy", 0.5) -> "1.50 nats"
    """
    check_mode(mode)
    if mode == "entropy":
        return f"{(1 - value01) * ENTROPY_CAP:.2f} nats"
    return f"{value01 * 100:.0f}%" if value01 * 100 == round(value01 * 100) else f"{value01 * 100:.1f}%"


def gradient_css(palette: str = DEFAULT_PALETTE) -> str:
    """A CSS linear-gradient through the palette stops, low confidence on the left.

    Example: gradient_css("cividis").startswith("linear-gradient(to right, #00224e 0%")
    """
    stops = PALETTES[check_palette(palette)]
    parts = ", ".join(f"{c} {i * 100 / (len(stops) - 1):.4g}%" for i, c in enumerate(stops))
    return f"linear-gradient(to right, {parts})"
