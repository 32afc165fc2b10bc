"""A real browser (Debian's chromium, driven by Playwright) on the launched app.

`make screenshot` (GREEDYSCORE_SCREENSHOT=1) also writes assets/screenshot.png; a plain test run
leaves the tracked file alone.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make test` (it installs Debian's chromium)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def send(page, text: str) -> None:
    box = page.locator("#gs-msg textarea")
    box.fill(text)
    page.locator("#gs-send").click()


def wait_reply(page) -> None:
    page.locator("#gs-reply .gs-token").first.wait_for(timeout=120_000)


def open_page(browser, url: str):
    page = browser.new_page()
    page.goto(url)
    return page


def test_chat_tokens_tooltip_chart_screenshot(browser, app_server):
    page = browser.new_page(viewport={"width": 1280, "height": 1500})
    page.goto(app_server)
    page.get_by_text("SmolLM2-135M-Instruct").first.wait_for()  # the page says which model answers
    send(page, "What is the capital of France?")
    wait_reply(page)
    tokens = page.locator("#gs-reply .gs-token")
    assert tokens.count() >= 3
    first = tokens.first
    for attr in ("data-prob", "data-logprob", "data-entropy", "data-margin", "data-rank", "aria-label", "tabindex"):
        assert first.get_attribute(attr) is not None, attr
    assert re.search(r"\d+(\.\d+)?%", first.get_attribute("aria-label"))
    # hover: the tooltip shows alternatives with percentages
    first.hover()
    tip = first.locator(".gs-tip")
    tip.wait_for(state="visible", timeout=5000)
    alts = tip.locator(".gs-alt-p")
    assert alts.count() >= 2
    assert all(re.fullmatch(r"\s*\d+(\.\d+)?%\s*", alts.nth(i).inner_text()) for i in range(alts.count()))
    # keyboard focus shows it too
    page.mouse.move(0, 0)
    tokens.nth(1).focus()
    tokens.nth(1).locator(".gs-tip").wait_for(state="visible", timeout=5000)
    # the Plotly chart rendered (SVG bars)
    page.locator("#gs-reply-chart .js-plotly-plot .bars path, #gs-reply-chart .js-plotly-plot .point path"
                 ).first.wait_for(timeout=30_000)
    assert page.locator("#gs-reply-stats").inner_text().lower().count("perplexity") == 1
    page.evaluate("document.activeElement && document.activeElement.blur()")
    first.hover()
    if os.environ.get("GREEDYSCORE_SCREENSHOT"):
        page.screenshot(path=str(ROOT / "assets" / "screenshot.png"), full_page=True)
    page.close()


STYLE_OF = """el => { const s = getComputedStyle(el); return {
    shadow: s.boxShadow, outline: s.outlineStyle, border: s.borderBottomStyle, font: s.fontFamily,
    whiteSpace: s.whiteSpace, tip: getComputedStyle(el.querySelector('.gs-tip')).display}; }"""


def test_css_does_what_the_cues_promise(browser, app_server):
    """The stylesheet as chromium applies it: tooltip hidden until hover/focus, a visible focus
    ring, low tokens underlined, near ties outlined dotted, special tokens set apart, whitespace kept."""
    page = open_page(browser, app_server)
    page.locator("#gs-reply .gs-legend").wait_for()
    page.evaluate("""() => {
        const html = (cls, text) =>
            `<span class="gs-token ${cls}" tabindex="0">${text}<span class="gs-tip">tip</span></span>`;
        const host = document.createElement('div');
        host.className = 'gs-tokens';
        host.innerHTML = html('', 'plain  two') + html('gs-low', 'low') + html('gs-near-tie', 'tie')
                       + html('gs-special', '&lt;|im_end|&gt;');
        document.querySelector('#gs-reply').appendChild(host);
    }""")
    plain, low, tie, special = (page.locator(f"#gs-reply .gs-tokens .gs-token >> nth={i}") for i in range(4))
    page.mouse.move(0, 0)
    base = plain.evaluate(STYLE_OF)
    assert base["tip"] == "none" and "pre" in base["whiteSpace"]  # tooltips hidden, spaces kept
    assert base["shadow"] == "none" and base["outline"] == "none"
    assert "inset" in low.evaluate(STYLE_OF)["shadow"]  # the underline bar, not colour alone
    assert tie.evaluate(STYLE_OF)["outline"] == "dotted"
    s = special.evaluate(STYLE_OF)
    assert s["border"] == "dashed" and "monospace" in s["font"]
    plain.hover()
    assert plain.evaluate(STYLE_OF)["tip"] == "block"
    page.mouse.move(0, 0)
    low.focus()
    focused = low.evaluate(STYLE_OF)
    assert focused["tip"] == "block" and focused["shadow"].count("rgb") >= 3  # underline kept + focus ring
    tie.focus()
    assert tie.evaluate(STYLE_OF)["outline"] == "dotted"  # the focus ring keeps the near-tie mark
    page.close()


def test_hostile_message_runs_nothing(browser, app_server):
    page = open_page(browser, app_server)
    send(page, 'Repeat exactly: <img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>')
    wait_reply(page)
    page.wait_for_timeout(500)
    assert page.evaluate("window.__pwned") is None
    shown = page.locator("#gs-chatbot").inner_text()
    assert '<img src=x onerror="window.__pwned=1">' in shown and "<script>" in shown  # text, not markup
    assert page.locator("#gs-chatbot img, #gs-reply img").count() == 0
    page.close()


def test_empty_message_shows_an_error_and_app_keeps_serving(browser, app_server):
    page = open_page(browser, app_server)
    send(page, "   ")
    page.get_by_text("empty prompt").first.wait_for(timeout=30_000)
    send(page, "Say OK.")
    wait_reply(page)
    page.close()


def json_href(page) -> str | None:
    link = page.locator("#gs-reply-json a")
    return link.first.get_attribute("href") if link.count() else None


def test_two_sessions_never_see_each_other(browser, app_server, engine):
    """Two browser contexts chat at the same time; then the prompt the model actually got for
    session A's second turn (from A's JSON export) holds A's words and none of B's."""
    ctx_a, ctx_b = browser.new_context(), browser.new_context()
    a, b = ctx_a.new_page(), ctx_b.new_page()
    a.goto(app_server)
    b.goto(app_server)
    # Playwright's sync API is not thread-safe: start both, then wait on both.
    send(a, "Pineapple-7731 is my code.")
    send(b, "Walrus-5512 is my code.")
    for page in (a, b):
        wait_reply(page)
        page.wait_for_function("() => document.querySelector('#gs-reply-json a') !== null", timeout=60_000)
    text_a, text_b = a.locator("#gs-chatbot").inner_text(), b.locator("#gs-chatbot").inner_text()
    assert "Pineapple-7731" in text_a and "Walrus-5512" not in text_a
    assert "Walrus-5512" in text_b and "Pineapple-7731" not in text_b
    first = json_href(a)
    send(a, "What is my code?")
    a.wait_for_function(
        "(first) => { const l = document.querySelector('#gs-reply-json a'); return l && l.href !== first; }",
        arg=a.locator("#gs-reply-json a").first.evaluate("l => l.href"), timeout=120_000,
    )
    assert json_href(a) != first
    data = a.request.get(a.locator("#gs-reply-json a").first.evaluate("l => l.href")).json()
    prompt = engine.decode(data["prompt_token_ids"])
    assert "Pineapple-7731" in prompt and "What is my code?" in prompt
    assert "Walrus-5512" not in prompt
    ctx_a.close()
    ctx_b.close()


def test_stop_keeps_the_text_so_far_and_the_app_serves_on(browser, app_server):
    """Stop during a long reply: streaming stops within a moment, the text so far stays, and the
    next message gets a full, coloured reply."""
    page = open_page(browser, app_server)
    send(page, "Write a very long story about a dragon who learns to paint.")
    bubble = page.locator("#gs-chatbot .message.bot, #gs-chatbot [data-testid='bot']").last
    page.wait_for_function(
        "() => { const b = document.querySelectorAll('#gs-chatbot [data-testid=\\'bot\\']');"
        " return b.length && b[b.length - 1].innerText.trim().length > 10; }", timeout=120_000)
    page.locator("#gs-stop").click()
    page.wait_for_timeout(1500)  # let a last in-flight update land
    frozen = bubble.inner_text()
    page.wait_for_timeout(2000)
    assert bubble.inner_text() == frozen and len(frozen.strip()) > 10  # stopped, text kept
    assert page.locator("#gs-reply .gs-token").count() == 0  # no scored reply for a stopped turn
    send(page, "Say OK.")
    wait_reply(page)
    page.close()
