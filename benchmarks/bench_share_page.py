"""Opening a shared result: seconds from navigation until every token of the shared reply is on
the page and its chart is drawn, in headless chromium against the launched app, for shares of
growing length up to the largest a share may hold (MAX_SHARED_CELLS: tokens and their
alternatives, at top-20 and top-5; then after MAX_SHARED_CHARS characters of messages). The
page must stay under 3 s.

    python benchmarks/bench_share_page.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from benchmarks.common import git_rev, machine, scored_prose, table, write_section  # noqa: E402


def scored_texts(shapes: list[tuple[int, int]]):
    """{(n, top_k): a real n-token teacher-forced reply with top_k alternatives} on the embedded model."""
    from greedyscore.engines.transformers import TransformersEngine
    from greedyscore.service import Service

    service = Service(TransformersEngine.load(None, device="cpu"))
    return service, {(n, k): scored_prose(service, n, k) for n, k in shapes}


def put_shares(store_path: Path, service, replies: dict) -> dict[str, str]:
    """Store each reply as a Score-text share; the longest once more after messages as long as a
    share may hold. -> {label: id}."""
    from greedyscore.sharing.document import MAX_SHARED_CHARS, share_text
    from greedyscore.sharing.store import ShareStore
    from greedyscore.types import Message

    store, ids = ShareStore(store_path), {}
    identity = service.identity
    for (_, k), reply in replies.items():
        doc = share_text(reply, (), identity, time.time()).to_json()
        ids[f"{len(reply.tokens):,} tokens, top-{k}"] = store.put(doc)
    (_, k), reply = max(replies.items(), key=lambda kv: (kv[0][1], kv[0][0]))  # the most tokens at top-20
    words = ("a long prompt, 你好 🍎 " * (MAX_SHARED_CHARS // 8))[: MAX_SHARED_CHARS // 2]
    messages = (Message("system", words), Message("user", words))
    ids[f"{len(reply.tokens):,} tokens, top-{k}, after {MAX_SHARED_CHARS:,} characters of messages"] = store.put(
        share_text(reply, messages, identity, time.time()).to_json())
    return ids


MARKS = ("page ready", "tokens on the page", "chart drawn")


def page_seconds(url: str, share_ids: dict[str, str], repeats: int) -> dict[str, dict[str, list[float]]]:
    """{share: {mark: seconds from navigation, one per repeat}}; each visit in a fresh browser context."""
    from playwright.sync_api import sync_playwright

    out = {label: {m: [] for m in MARKS} for label in share_ids}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        for _ in range(repeats):
            for label, item in share_ids.items():
                context = browser.new_context(viewport={"width": 1280, "height": 1300})
                page = context.new_page()
                t0 = time.perf_counter()
                page.goto(f"{url}?r={item}")
                for mark, selector in zip(MARKS, ("#gs-msg textarea", "#gs-shared-reply .gs-token >> nth=-1",
                                                  "#gs-shared-chart .js-plotly-plot .bars path >> nth=0")):
                    page.locator(selector).wait_for(timeout=120_000)
                    out[label][mark].append(time.perf_counter() - t0)
                context.close()
        browser.close()
    return out


def main() -> None:
    from servers import free_port, start, stop

    from greedyscore.sharing.document import MAX_SHARED_CELLS, MAX_SHARED_CHARS
    from greedyscore.types import MAX_TOP_K

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="visits of each share (default 3)")
    args = ap.parse_args()
    largest = {k: MAX_SHARED_CELLS // (k + 1) for k in (5, MAX_TOP_K)}  # the most tokens a share holds at top-k
    shapes = [(20, MAX_TOP_K), (largest[MAX_TOP_K] // 2, MAX_TOP_K), (largest[MAX_TOP_K], MAX_TOP_K), (largest[5], 5)]
    service, replies = scored_texts(shapes)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "shares.db"
        share_ids = put_shares(store, service, replies)
        service.close()
        port = free_port()
        proc = start([sys.executable, "app.py", "--port", str(port), "--store", str(store)],
                     f"http://127.0.0.1:{port}/", "bench-share-page", env={"GRADIO_ANALYTICS_ENABLED": "False"})
        try:
            times = page_seconds(f"http://127.0.0.1:{port}/", share_ids, args.repeats)
        finally:
            stop(proc)
    rows = [[label, *(f"{statistics.median(t[m]):.2f} / {max(t[m]):.2f}" for m in MARKS)]
            for label, t in times.items()]
    body = (f"Machine: {machine()}, headless Debian chromium. Commit {git_rev()}. Seconds from navigating to "
            f"`/?r=ID` (the launched app, a SQLite store, a fresh browser context each) until the app's page is "
            f"ready, the shared reply's last token is on it (coloured, its tooltip in place), and its chart is "
            f"drawn (Plotly's bundle loads with the first chart); median / worst of {args.repeats}. Score-text "
            f"shares of real scored prose. A share draws at most {MAX_SHARED_CELLS:,} cells (a token or one of "
            f"its alternatives) and {MAX_SHARED_CHARS:,} characters of messages; target < 3 s.\n\n"
            + table(["share", *(f"{m}, s" for m in MARKS)], rows))
    print(body)
    write_section("Opening a shared result (bench_share_page.py)", body)


if __name__ == "__main__":
    main()
