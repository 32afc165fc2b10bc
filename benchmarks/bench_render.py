"""Rendering a 2,000-token reply: HTML + figure build time in Python, and in chromium the
conversation as the app shows it (every token with its tooltip and fork buttons, the map above
it): parse and layout, hover, responsiveness, scrolling through it, and a jump from the map.

    python benchmarks/bench_render.py
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import git_rev, machine, scored_prose, table, write_section  # noqa: E402

N = 2000


def long_reply():
    """A real 2,000-token scored text (teacher forcing on the embedded model)."""
    from greedyscore.engines.transformers import TransformersEngine
    from greedyscore.service import Service

    return scored_prose(Service(TransformersEngine.load(None, device="cpu")), N, 5)


def conversation(reply):
    from greedyscore.conversation import Conversation

    return Conversation().ask("Tell me about the river town.").answer(reply)


def python_times(reply, repeats: int = 7) -> dict[str, float]:
    from greedyscore.render import View, stats_html
    from greedyscore.render.chart import confidence_figure, histogram_figure
    from greedyscore.render.explore import conversation_html
    from greedyscore.render.map import map_html

    confidence_figure(reply.tokens)  # first call imports plotly
    conv = conversation(reply)
    out: dict[str, list[float]] = {"html": [], "figure": [], "histogram": [], "total": [], "map": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        conversation_html(conv, View())  # the map included
        stats_html(reply)
        t1 = time.perf_counter()
        confidence_figure(reply.tokens)
        t2 = time.perf_counter()
        histogram_figure(reply.tokens)
        t3 = time.perf_counter()
        map_html(reply.tokens, View())  # the map alone, beside the whole reply's HTML
        t4 = time.perf_counter()
        out["html"].append(t1 - t0)
        out["figure"].append(t2 - t1)
        out["histogram"].append(t3 - t2)
        out["total"].append(t3 - t0)
        out["map"].append(t4 - t3)
    return {k: statistics.median(v) * 1000 for k, v in out.items()}


SCROLL = """() => new Promise(r => { const frames = []; let last = performance.now();
    function step() { const now = performance.now(); frames.push(now - last); last = now;
      if (window.scrollY + innerHeight >= document.body.scrollHeight - 2) { r(frames); return; }
      window.scrollBy(0, 120); requestAnimationFrame(step); }
    window.scrollTo(0, 0); requestAnimationFrame(step); })"""


JUMP = """() => new Promise(r => { const cells = document.querySelectorAll('.gs-map-cells > span');
    window.scrollTo(0, 0); const t0 = performance.now(); cells[cells.length - 1].click();
    requestAnimationFrame(() => r({ms: performance.now() - t0, cells: cells.length,
      at: document.activeElement.dataset.i, kb: document.querySelector('.gs-map').outerHTML.length / 1024})); })"""


def layout_ms(browser, doc: str) -> float:
    """Chromium: a fresh page's parse, style and layout of `doc`."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    t0 = time.perf_counter()
    page.set_content(doc)
    page.evaluate("document.body.offsetHeight")  # forces style and layout of every element
    ms = (time.perf_counter() - t0) * 1000
    page.close()
    return ms


def map_layout_cost(browser, doc: str, repeats: int = 3) -> tuple[float, float]:
    """-> median page parse + layout (ms) with the map and with it cut out, runs interleaved."""
    bare = re.sub(r'<div class="gs-map".*?(?=<div class="gs-tokens">)', "", doc, flags=re.S)
    assert 'class="gs-map"' in doc and 'class="gs-map"' not in bare  # noqa: S101
    with_map, without = [], []
    for _ in range(repeats):
        with_map.append(layout_ms(browser, doc))
        without.append(layout_ms(browser, bare))
    return statistics.median(with_map), statistics.median(without)


def browser_times(reply) -> dict[str, float]:
    """Chromium: the conversation as the app draws it (with the map and its script), then the chart
    drawn by an already loaded Plotly (as in the app, where plotly.js is loaded once with the page)."""
    from playwright.sync_api import sync_playwright

    from greedyscore.render import CSS, View
    from greedyscore.render.chart import confidence_figure
    from greedyscore.render.explore import conversation_html
    from greedyscore.render.map import MAP_HEAD

    doc = (f'<!doctype html><html><head><meta charset="utf-8"><style>{CSS}</style>{MAP_HEAD}</head>'
           f"<body>{conversation_html(conversation(reply), View())}</body></html>")
    fig_json = confidence_figure(reply.tokens).to_json()
    shell = confidence_figure(reply.tokens[:1]).to_html(full_html=True, include_plotlyjs=True, div_id="warm")
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        page = b.new_page(viewport={"width": 1280, "height": 900})
        t0 = time.perf_counter()
        page.set_content(doc)
        page.evaluate("document.body.offsetHeight")  # forces style and layout of every token
        tokens_ms = (time.perf_counter() - t0) * 1000
        count = page.locator(".gs-token").count()
        last = page.locator(".gs-token").nth(count - 1)
        last.scroll_into_view_if_needed()
        t1 = time.perf_counter()
        last.hover()
        last.locator(".gs-tip").wait_for(state="visible")
        hover_ms = (time.perf_counter() - t1) * 1000
        frame_ms = page.evaluate(
            """() => new Promise(r => { let n = 0; const t0 = performance.now();
                 function tick() { const d = performance.now(); requestAnimationFrame(() => {
                   n = Math.max(n, performance.now() - d); if (performance.now() - t0 < 1000) tick(); else r(n); }); }
                 tick(); })"""
        )
        frames = page.evaluate(SCROLL)[1:]
        jump = page.evaluate(JUMP)  # the map's last cell: scrolled to, focused, highlighted, painted
        page.close()
        with_map, without_map = map_layout_cost(b, doc)
        chart = b.new_page(viewport={"width": 1280, "height": 900})
        chart.set_content(shell)
        chart.locator("#warm .bars path").first.wait_for()
        chart_ms = chart.evaluate(
            """async (fig) => { fig = JSON.parse(fig); const div = document.createElement('div');
                 document.body.appendChild(div); const t0 = performance.now();
                 await Plotly.newPlot(div, fig.data, fig.layout); return performance.now() - t0; }""",
            fig_json,
        )
        b.close()
    frames.sort()
    return {"tokens": count, "tokens_ms": tokens_ms, "hover_ms": hover_ms, "frame_ms": frame_ms,
            "chart_ms": chart_ms, "html_mb": len(doc.encode()) / 2**20, "scroll_frames": len(frames),
            "scroll_p50": frames[len(frames) // 2], "scroll_p95": frames[int(len(frames) * 0.95)],
            "scroll_max": frames[-1], "jump_ms": jump["ms"], "map_cells": jump["cells"], "map_kb": jump["kb"],
            "jumped_to": jump["at"], "with_map_ms": with_map, "without_map_ms": without_map}


def main() -> None:
    reply = long_reply()
    assert len(reply.tokens) == N, len(reply.tokens)  # noqa: S101
    py = python_times(reply)
    br = browser_times(reply)
    assert br["map_cells"] == N and br["jumped_to"] is not None, br  # noqa: S101
    rows = [
        ["conversation HTML (tooltips, fork buttons) + stats (Python)", f"{py['html']:.0f} ms"],
        ["confidence figure (Python)", f"{py['figure']:.0f} ms"],
        ["histogram (Python)", f"{py['histogram']:.0f} ms"],
        ["**all of the above** (target < 150 ms)", f"**{py['total']:.0f} ms**"],
        ["**the map above the reply alone** (Python; inside the conversation HTML above; target < 150 ms)",
         f"**{py['map']:.1f} ms**"],
        ["page: the conversation's token elements parsed, styled and laid out (chromium)", f"{br['tokens_ms']:.0f} ms"],
        ["chart: Plotly.newPlot of the 2,000-bar figure, plotly.js already loaded", f"{br['chart_ms']:.0f} ms"],
        ["hover on the last token until its tooltip shows", f"{br['hover_ms']:.0f} ms"],
        ["longest animation frame in the next second (responsiveness)", f"{br['frame_ms']:.0f} ms"],
        [f"scrolling through it, 120 px a frame: frame time p50 / p95 / max ({br['scroll_frames']} frames)",
         f"{br['scroll_p50']:.0f} / {br['scroll_p95']:.0f} / {br['scroll_max']:.0f} ms"],
        ["map: a click on its last cell until the token is scrolled to, focused and the frame painted",
         f"{br['jump_ms']:.0f} ms"],
        ["HTML size", f"{br['html_mb']:.1f} MB for {br['tokens']} token elements (split characters are one)"],
        ["page parse + layout with the map / with it cut out (chromium, medians of 3 interleaved)",
         f"{br['with_map_ms']:.0f} / {br['without_map_ms']:.0f} ms"],
        ["map HTML size", f"{br['map_kb']:.0f} KB for {br['map_cells']} cells (one per token)"],
    ]
    load = os.getloadavg()[0]  # the cores may be shared: every row then runs slower, the same for each
    body = (f"Machine: {machine()}, headless Debian chromium, load average {load:.1f} at the end. Commit {git_rev()}. "
            f"A real 2,000-token teacher-forced reply, top-5 alternatives; Python times are medians of 7.\n\n"
            + table(["what", "time"], rows))
    print(body)
    write_section("Rendering a 2,000-token reply (bench_render.py)", body)


if __name__ == "__main__":
    main()
