"""How a visitor asked to see a reply: colour mode, palette, threshold. Every renderer that
colours tokens takes one `View`, so the tokens, the charts, the stats and the legend agree.

`View.make` validates loosely typed UI/API values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import BadInput
from .colors import DEFAULT_PALETTE, check_mode, check_palette, value_text

COLOR_MODES = {"probability": "prob", "margin (p1 − p2)": "margin", "entropy": "entropy"}  # UI label -> mode


@dataclass(frozen=True)
class View:
    color_by: str = "prob"
    palette: str = DEFAULT_PALETTE
    threshold: float = 0.5

    @staticmethod
    def make(color_by: Any, palette: Any, threshold: Any) -> View:
        """Example: View.make("margin (p1 − p2)", "viridis", 0.3) -> View("margin", "viridis", 0.3)"""
        mode = check_mode(COLOR_MODES.get(color_by, color_by) if isinstance(color_by, str) else repr(color_by))
        check_palette(palette if isinstance(palette, str) else repr(palette))
        try:
            value = float(threshold)
        except (TypeError, ValueError):
            value = math.nan
        if isinstance(threshold, bool) or not 0.0 <= value <= 1.0:
            raise BadInput(f"threshold must be a number between 0 and 1, got {threshold!r}")
        return View(mode, palette, value)

    def threshold_text(self) -> str:
        """What "below the threshold" means in the mode's units.

        Example: View("prob", threshold=0.5).threshold_text() -> "probability < 50%"
        """
        mode = check_mode(self.color_by)
        if mode == "entropy":
            return f"entropy > {value_text(mode, self.threshold)}"
        return f"{'probability' if mode == 'prob' else 'margin'} < {value_text(mode, self.threshold)}"
