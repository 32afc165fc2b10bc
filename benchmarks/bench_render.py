"""Rendering a 2,000-token reply: HTML + figure build time in Python, and the page's render time in chromium.

    python benchmarks/bench_render.py
"""

from __future__ import annotations

import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import git_rev, machine, table, write_section  # noqa: E402

N = 2000


def long_reply():
    """A real 2,000-token scored text (teacher forcing on the embedded model)."""
    from greedyscore.engines.transformers import TransformersEngine
    from greedyscore.service import Service
    from greedyscore.types import Settings

    service = Service(TransformersEngine.load(None, device="cpu"))
    words = "In 1848 the river town built a stone bridge; 你好, traders came with 🍎 and\n\tsalt. " * 200
    ids = service.engine.text_ids(words)[1][:N]
    reply = service.score_text(service.engine.decode(ids), Settings(top_k=5))
    return reply


def python_times(reply, repeats: int = 7) -> dict[str, float]:
    from greedyscore.render import confidence_figure, histogram_figure, reply_html, stats_html

    confidence_figure(reply.tokens)  # first call imports plotly
    out: dict[str, list[float]] = {"html": [], "figure": [], "histogram": [], "total": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        reply_html(reply)
        stats_html(reply)
        t1 = time.perf_counter()
        confidence_figure(reply.tokens)
        t2 = time.perf_counter()
        histogram_figure(reply.tokens)
        t3 = time.perf_counter()
        out["html"].append(t1 - t0)
        out["figure"].append(t2 - t1)
        out["histogram"].append(t3 - t2)
        out["total"].append(t3 - t0)
    return {k: statistics.median(v) * 1000 for k, v in out.items()}


def browser_times(reply) -> dict[str, float]:
    """Chromium: the token HTML page alone, then the chart drawn by an already loaded Plotly
    (as in the app, where plotly.js is loaded once with the page)."""
    from playwright.sync_api import sync_playwright

    from greedyscore.render import confidence_figure, page_html

    doc = page_html(reply)
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
    return {"tokens": count, "tokens_ms": tokens_ms, "hover_ms": hover_ms, "frame_ms": frame_ms,
            "chart_ms": chart_ms, "html_mb": len(doc.encode()) / 2**20}


def main() -> None:
    reply = long_reply()
    assert len(reply.tokens) == N, len(reply.tokens)
    py = python_times(reply)
    br = browser_times(reply)
    rows = [
        ["reply HTML + stats (Python)", f"{py['html']:.0f} ms"],
        ["confidence figure (Python)", f"{py['figure']:.0f} ms"],
        ["histogram (Python)", f"{py['histogram']:.0f} ms"],
        ["**all of the above** (target < 150 ms)", f"**{py['total']:.0f} ms**"],
        ["page: 2,000 token elements parsed, styled and laid out (chromium)", f"{br['tokens_ms']:.0f} ms"],
        ["chart: Plotly.newPlot of the 2,000-bar figure, plotly.js already loaded", f"{br['chart_ms']:.0f} ms"],
        ["hover on the last token until its tooltip shows", f"{br['hover_ms']:.0f} ms"],
        ["longest animation frame in the next second (responsiveness)", f"{br['frame_ms']:.0f} ms"],
        ["token HTML size", f"{br['html_mb']:.1f} MB for {br['tokens']} token elements"],
    ]
    body = (f"Machine: {machine()}, headless Debian chromium. Commit {git_rev()}. A real 2,000-token "
            f"teacher-forced reply, top-5 alternatives; Python times are medians of 7.\n\n"
            + table(["what", "time"], rows))
    print(body)
    write_section("Rendering a 2,000-token reply (bench_render.py)", body)


if __name__ == "__main__":
    main()
