"""A real browser (Debian's chromium, driven by Playwright) on the launched app.

`make screenshot` (GREEDYSCORE_SCREENSHOT=1) also writes assets/screenshot.png; a plain test run
leaves the tracked file alone.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]


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


def fill_number(page, label: str, value: str) -> None:
    """A slider's number box set to `value`: on a loaded machine the slider can still be settling and take
    back a first fill, so it is filled until it holds."""
    box = page.get_by_label(label)
    for _ in range(5):
        box.fill(value)
        box.press("Enter")
        page.wait_for_timeout(300)
        if box.input_value() == value:
            break
    assert box.input_value() == value


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
    assert all(re.fullmatch(r"\s*\d+(\.\d+)?%\s*\u2934?\s*", alts.nth(i).inner_text()) for i in range(alts.count()))
    # keyboard focus shows it too
    page.mouse.move(0, 0)
    tokens.nth(1).focus()
    tokens.nth(1).locator(".gs-tip").wait_for(state="visible", timeout=5000)
    # the Plotly chart rendered (SVG bars)
    page.locator("#gs-reply-chart .js-plotly-plot .bars path, #gs-reply-chart .js-plotly-plot .point path"
                 ).first.wait_for(timeout=30_000)
    assert page.locator("#gs-reply-stats").inner_text().lower().count("perplexity") == 1
    page.evaluate("document.activeElement && document.activeElement.blur()")
    if os.environ.get("GREEDYSCORE_SCREENSHOT"):  # with a fork beside the reply, for the README
        paris = tokens.nth(5)
        paris.hover()
        paris.locator("button.gs-fork").first.click()
        page.locator("#gs-forks .gs-fork-cols").wait_for(timeout=120_000)
        page.locator("#gs-fork-chart .js-plotly-plot .scatterlayer .trace").first.wait_for(timeout=30_000)
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.mouse.move(0, 0)
        first.hover()
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
    shown = page.locator("#gs-reply .gs-turn-user").inner_text()
    assert '<img src=x onerror="window.__pwned=1">' in shown and "<script>" in shown  # text, not markup
    assert page.locator("#gs-reply img, #gs-forks img").count() == 0
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
    text_a, text_b = a.locator("#gs-reply .gs-conv").inner_text(), b.locator("#gs-reply .gs-conv").inner_text()
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
    prompt = engine.tokenizer.decode(data["prompt_token_ids"])
    assert "Pineapple-7731" in prompt and "What is my code?" in prompt
    assert "Walrus-5512" not in prompt
    ctx_a.close()
    ctx_b.close()


def test_stop_ends_the_reply_where_it_is_and_scores_it(browser, app_server):
    """Stop during a long reply: the reply ends at the tokens it has, coloured and marked as
    stopped, and the next message gets a full reply."""
    page = open_page(browser, app_server)
    send(page, "Write a very long story about a dragon who learns to paint.")
    page.wait_for_function("() => { const l = document.querySelector('#gs-live .gs-bubble');"  # not the status line
                           " return l && l.innerText.trim().length > 10; }", timeout=120_000)
    page.locator("#gs-stop").click()
    page.locator("#gs-reply .gs-turn-note").wait_for(timeout=30_000)
    assert "stopped" in page.locator("#gs-reply .gs-turn-note").inner_text()
    assert page.locator("#gs-reply .gs-turn-reply .gs-token").count() >= 2
    assert "abort" in page.locator("#gs-reply-stats").inner_text()
    send(page, "Say OK.")
    page.wait_for_function("() => document.querySelectorAll('#gs-reply .gs-turn-reply').length == 2",
                           timeout=120_000)
    page.close()


# --- explore: the conversation coloured in place, forks --------------------------------------------
TURN_TOKENS = "#gs-reply .gs-turn-reply .gs-token"


def ask(page, text: str, n_turns: int) -> None:
    send(page, text)
    page.wait_for_function(f"() => document.querySelectorAll('#gs-reply .gs-turn-reply').length == {n_turns}",
                           timeout=120_000)


def assert_fork_shown(page, at: int) -> None:
    page.locator("#gs-forks .gs-fork-cols").wait_for(timeout=120_000)
    cols = page.locator("#gs-forks .gs-fork-col")
    assert cols.count() == 2
    fork = cols.nth(1)
    shared = fork.locator(".gs-token.gs-shared")
    assert shared.count() >= 1 and fork.locator(".gs-token.gs-diverge").count() == 1
    assert fork.locator(".gs-token.gs-diverge").get_attribute("data-i") == str(at)
    assert cols.nth(0).locator(".gs-token.gs-diverge").get_attribute("data-i") == str(at)
    assert "total logprob" in fork.inner_text() and "perplexity" in fork.inner_text()
    assert "part at token" in page.locator("#gs-forks .gs-rejoin").inner_text()
    page.locator("#gs-fork-chart .js-plotly-plot .scatterlayer .trace").first.wait_for(timeout=30_000)
    assert page.locator("#gs-fork-chart .js-plotly-plot .scatterlayer .trace").count() == 2


def test_click_an_alternative_to_fork_and_earlier_turns_stay_coloured(browser, app_server):
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(app_server)
    ask(page, "What is the capital of France?", 1)
    first_reply = page.locator("#gs-reply .gs-turn-reply").first.inner_text()
    token = page.locator(TURN_TOKENS).nth(1)
    token.hover()
    button = token.locator("button.gs-fork").first
    button.wait_for(state="visible", timeout=5000)
    chosen = button.locator(".gs-alt-t").inner_text()
    button.click()
    assert_fork_shown(page, 1)
    fork_col = page.locator("#gs-forks .gs-fork-col").nth(1)
    assert chosen in fork_col.locator(".gs-token.gs-diverge").inner_text().replace(" ", "\u2423")
    assert "fork 1" in page.locator("#gs-forks .gs-tree").inner_text()
    # a second turn: the first keeps its colours and numbers
    ask(page, "And of Italy?", 2)
    turns = page.locator("#gs-reply .gs-turn-reply")
    assert turns.nth(0).locator(".gs-token").count() >= 3 and turns.nth(1).locator(".gs-token").count() >= 1
    assert turns.nth(0).inner_text() == first_reply
    # selecting the first turn points the stats and the export at it
    n_first = turns.nth(0).locator(".gs-token").count()
    turns.nth(0).locator(".gs-bubble").click(position={"x": 2, "y": 2})
    page.wait_for_function("() => document.querySelector('#gs-reply .gs-turn-reply.gs-selected')"
                           " === document.querySelectorAll('#gs-reply .gs-turn-reply')[0]")
    page.wait_for_function("() => document.querySelector('#gs-forks .gs-tree') !== null", timeout=30_000)
    data = page.request.get(page.locator("#gs-reply-json a").first.evaluate("l => l.href")).json()
    assert data["user"] == "What is the capital of France?" and len(data["forks"]) == 1
    assert data["forks"][0]["forked_at"] == 1 and data["forks"][0]["parent"] == 0
    assert len(data["tokens"]) >= n_first
    # Enter on the second turn selects it; Clear removes the conversation and its forks
    turns.nth(1).focus()
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('#gs-reply .gs-turn-reply.gs-selected')"
                           " === document.querySelectorAll('#gs-reply .gs-turn-reply')[1]")
    page.wait_for_function("() => !document.querySelector('#gs-forks .gs-tree')", timeout=30_000)  # no forks there
    page.locator("#gs-clear").click()
    page.wait_for_function("() => document.querySelectorAll('#gs-reply .gs-turn').length === 0", timeout=30_000)
    assert page.locator("#gs-forks .gs-fork-col").count() == 0
    page.close()


def test_keyboard_only_fork(browser, app_server):
    """Tab to a token (its tooltip opens), Tab into its alternatives, Enter: the fork appears."""
    page = open_page(browser, app_server)
    ask(page, "What is the capital of France?", 1)
    page.locator("#gs-msg textarea").focus()
    for _ in range(80):
        page.keyboard.press("Shift+Tab")
        active = page.evaluate("() => { const a = document.activeElement; return a && a.matches("
                               "'#gs-reply .gs-turn-reply .gs-token:not(.gs-special)') ? a.dataset.i : null; }")
        if active is not None:
            break
    assert active is not None, "Shift+Tab never reached a token"
    page.keyboard.press("Tab")
    focused = page.evaluate("() => document.activeElement.matches('button.gs-fork')")
    assert focused, "Tab from a token goes into its tooltip's alternatives"
    page.keyboard.press("Enter")
    assert_fork_shown(page, int(active))
    page.close()


def test_tooltips_stay_inside_the_window(browser, app_server):
    page = browser.new_page(viewport={"width": 520, "height": 900})
    page.goto(app_server)
    ask(page, "Write one sentence about the sea.", 1)
    tokens = page.locator(TURN_TOKENS)
    rightmost = max(range(tokens.count()), key=lambda i: tokens.nth(i).bounding_box()["x"])
    tokens.nth(rightmost).hover()
    tip = tokens.nth(rightmost).locator(".gs-tip")
    tip.wait_for(state="visible", timeout=5000)
    box = tip.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 520, box
    page.close()


def test_a_split_character_is_one_element_with_every_fragment(browser, app_server):
    page = open_page(browser, app_server)
    ask(page, "Reply with three fruit emoji 🍎🍌", 1)
    unit = page.locator("#gs-reply .gs-turn-reply .gs-unit").first
    unit.wait_for(timeout=10_000)
    n = int(unit.get_attribute("data-n"))
    assert n >= 2 and "\ufffd" not in unit.inner_text()
    unit.hover()
    tip = unit.locator(".gs-tip")
    tip.wait_for(state="visible", timeout=5000)
    assert f"fragment {n} of {n}" in tip.inner_text() and tip.locator(".gs-frag").count() == n
    assert page.locator("#gs-reply .gs-turn-reply .gs-cont").count() == 0  # no thin dotted fragments
    page.close()


def test_one_model_event_at_a_time_per_visitor_and_clear_stays_clear(browser, app_server):
    """A fork asked for while a turn runs is refused with a message (it would otherwise write back
    an old conversation); Clear during a turn stops it and the turn does not come back."""
    page = open_page(browser, app_server)
    ask(page, "What is the capital of France?", 1)
    # a reply long enough to still be running when the fork is asked for (the server's default is 32 tokens)
    page.get_by_text("Settings").first.click()
    fill_number(page, "number input for max new tokens", "600")
    send(page, "Write a very long story about a dragon who learns to paint.")
    page.wait_for_function("() => { const l = document.querySelector('#gs-live .gs-bubble');"
                           " return l && l.innerText.trim().length > 10; }", timeout=120_000)
    token = page.locator(TURN_TOKENS).nth(1)
    token.hover()
    token.locator("button.gs-fork").first.click()
    page.get_by_text("still being generated").first.wait_for(timeout=30_000)
    page.locator("#gs-clear").click()
    page.wait_for_function("() => document.querySelectorAll('#gs-reply .gs-turn').length === 0", timeout=30_000)
    page.wait_for_timeout(3000)  # the stopped turn has ended by now: it must not reappear
    assert page.locator("#gs-reply .gs-turn").count() == 0
    assert page.locator("#gs-forks .gs-fork-col").count() == 0
    ask(page, "Say OK.", 1)  # and the visitor can go on
    page.close()


def test_calibration_diagram_on_the_sample_text(browser, app_server):
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    page.goto(app_server)
    page.get_by_role("tab", name="Score text").click()
    page.locator("#gs-cal-sample").click()
    page.wait_for_function("document.querySelector('#gs-score-text textarea').value.includes('长江')")
    page.locator("#gs-score-btn").click()
    page.locator("#gs-cal-plot .js-plotly-plot .bars path").first.wait_for(timeout=120_000)
    summary = page.locator("#gs-cal-summary").inner_text()
    assert "ECE" in summary and "Brier" in summary and "too few" not in summary
    legend = page.locator("#gs-cal-plot .legendtext").evaluate_all("els => els.map(e => e.textContent)")
    assert "perfectly calibrated" in legend and any("accuracy" in t for t in legend)
    if os.environ.get("GREEDYSCORE_SCREENSHOT"):
        page.locator("#gs-cal-plot").scroll_into_view_if_needed()
        panel = page.locator("#gs-cal-summary").locator("xpath=../../..")
        panel.screenshot(path=str(ROOT / "assets" / "calibration.png"))


def test_guess_the_next_token_three_rounds(browser, app_server):
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(app_server)
    page.get_by_role("tab", name="Guess the next token").click()
    page.locator("#gs-guess-start").click()
    page.locator("#gs-guess-board .gs-guess-next").wait_for(timeout=120_000)
    score = page.locator("#gs-guess-score-line")
    seen = [score.inner_text()]
    for guess in ("Once", "upon", "banana"):
        page.locator("#gs-guess-input textarea").fill(guess)
        page.locator("#gs-guess-btn").click()
        page.wait_for_function("(prev) => { const e = document.querySelector('#gs-guess-score-line');"
                               " return e && e.innerText !== prev; }", arg=seen[-1], timeout=60_000)
        seen.append(score.inner_text())
    assert "Round 3 of" in seen[-1] and "hits 2/3" in seen[-1] and "bits/token" in seen[-1]
    assert page.locator("#gs-guess-round .gs-miss").count() == 1  # banana was not the next token
    assert page.locator("#gs-guess-board .gs-token").count() >= 3  # the revealed tokens, coloured
    page.locator("#gs-guess-finish").click()
    page.locator("#gs-guess-chart .js-plotly-plot .scatterlayer path").first.wait_for(timeout=30_000)
    assert "bits" in page.locator("#gs-guess-summary").inner_text()
    if os.environ.get("GREEDYSCORE_SCREENSHOT"):
        page.locator("#gs-guess-chart").scroll_into_view_if_needed()
        page.screenshot(path=str(ROOT / "assets" / "guess.png"), full_page=True)


def test_compare_tab_shows_both_sides_and_the_difference(browser, app_server):
    page = browser.new_page(viewport={"width": 1280, "height": 1500})
    page.goto(app_server)
    page.get_by_role("tab", name="Compare").click()
    page.locator("#gs-cmp-btn").click()
    page.locator("#gs-cmp .gs-cmp-strip .gs-cmp-span").first.wait_for(timeout=120_000)
    assert page.locator("#gs-cmp .gs-cmp-sides .gs-token").count() >= 20  # both sides, coloured tokens
    assert "B less sure" in page.locator("#gs-cmp .gs-cmp-legend").inner_text()
    page.locator("#gs-cmp-chart .js-plotly-plot .bars path").first.wait_for(timeout=30_000)
    if os.environ.get("GREEDYSCORE_SCREENSHOT"):
        page.locator("#gs-cmp").screenshot(path=str(ROOT / "assets" / "compare.png"))


def test_share_a_reply_open_it_elsewhere_rerun_and_continue(browser, app_server):
    """Share under a reply -> a link; a second browser context (another visitor) sees the same
    coloured tokens read-only, Re-run says "reproduced", Continue makes it its own conversation."""
    author = browser.new_context(viewport={"width": 1280, "height": 1300})
    page = author.new_page()
    page.goto(app_server)
    send(page, "What is the capital of France?")
    wait_reply(page)
    tokens = page.locator("#gs-reply .gs-token")
    mine = [(tokens.nth(i).get_attribute("data-prob"), tokens.nth(i).inner_text()) for i in range(tokens.count())]
    page.locator("#gs-reply button.gs-share").first.click()
    box = page.locator("#gs-share-link input.gs-share-url")
    box.wait_for(timeout=30_000)
    link = box.input_value()
    assert re.fullmatch(re.escape(app_server.rstrip("/")) + r"/\?r=[A-Za-z0-9_-]{22}", link)
    page.locator("#gs-share-link button.gs-copy").click()
    page.locator("#gs-share-link button.gs-copy", has_text="Copied").wait_for(timeout=5000)

    visitor = browser.new_context(viewport={"width": 1280, "height": 1300})
    other = visitor.new_page()
    other.goto(link)
    shared = other.locator("#gs-shared-reply .gs-token")
    shared.first.wait_for(timeout=60_000)
    theirs = [(shared.nth(i).get_attribute("data-prob"), shared.nth(i).inner_text()) for i in range(shared.count())]
    assert theirs == mine
    background = shared.first.evaluate("el => getComputedStyle(el).backgroundColor")
    assert background not in ("rgba(0, 0, 0, 0)", "transparent")  # coloured
    shared.first.hover()
    shared.first.locator(".gs-tip").wait_for(state="visible", timeout=5000)
    assert other.locator("#gs-shared-reply button.gs-fork, #gs-shared-reply button.gs-share").count() == 0  # read-only
    assert "SmolLM2-135M-Instruct" in other.locator("#gs-shared-head").inner_text()
    other.locator("#gs-shared-chart .js-plotly-plot").first.wait_for(timeout=30_000)
    other.locator("#gs-rerun-btn").click()
    verdict = other.locator("#gs-rerun .gs-repro-ok .gs-verdict")
    verdict.wait_for(timeout=120_000)
    assert verdict.inner_text() == "Re-run here: reproduced"
    if os.environ.get("GREEDYSCORE_SCREENSHOT"):  # for the README
        other.mouse.move(0, 0)
        other.locator("#gs-shared").screenshot(path=str(ROOT / "assets" / "share.png"))
    other.locator("#gs-continue").click()
    other.locator("#gs-reply .gs-token").first.wait_for(timeout=30_000)
    assert other.locator("#gs-reply .gs-turn-user").first.inner_text() == "What is the capital of France?"
    send(other, "And of Germany?")  # the visitor's own conversation goes on
    other.locator("#gs-reply .gs-turn-reply").nth(1).locator(".gs-token").first.wait_for(timeout=120_000)
    assert page.locator("#gs-reply .gs-turn-reply").count() == 1  # the author's is untouched
    bad = visitor.new_page()
    bad.goto(app_server + "?r=" + "B" * 22)
    bad.locator("#gs-shared .gs-shared-missing").wait_for(timeout=30_000)
    assert "nothing is shared under that link" in bad.locator("#gs-shared").inner_text()
    author.close()
    visitor.close()


def test_share_a_scored_text_and_rerun_it(browser, app_server):
    author = browser.new_context()
    page = author.new_page()
    page.goto(app_server)
    page.get_by_role("tab", name="Score text").click()
    page.locator("#gs-score-text textarea").fill("The Eiffel Tower is in Paris.")
    page.locator("#gs-score-btn").click()
    page.locator("#gs-score .gs-token").first.wait_for(timeout=60_000)
    page.locator("#gs-score-share").click()
    link = page.locator("#gs-share-link input.gs-share-url").last
    link.wait_for(timeout=30_000)
    visitor = browser.new_context()
    other = visitor.new_page()
    other.goto(link.input_value())
    other.locator("#gs-shared-reply .gs-token").first.wait_for(timeout=60_000)
    assert "Eiffel Tower is in Paris." in other.locator("#gs-shared-reply .gs-tokens").inner_text()
    assert other.locator("#gs-continue").inner_text() == "Open in Score text"
    other.locator("#gs-rerun-btn").click()
    other.locator("#gs-rerun .gs-repro-ok").wait_for(timeout=120_000)
    other.locator("#gs-continue").click()
    other.locator("#gs-score .gs-token").first.wait_for(timeout=30_000)
    assert other.locator("#gs-score-text textarea").input_value() == "The Eiffel Tower is in Paris."
    author.close()
    visitor.close()


def test_a_stored_share_with_a_lone_surrogate_shows_a_message_and_the_page_keeps_working(browser, app_server,
                                                                                       app_store, service):
    """A document another process (or an older greedyscore) stored with a lone surrogate in it: the
    page says what is wrong instead of its stream dying, and the visitor's Chat still answers."""
    import time

    from greedyscore.sharing.document import share_text
    from greedyscore.sharing.store import ShareStore
    from greedyscore.types import Message, Settings

    reply = service.score_text("Paris is lovely.", Settings(top_k=3))
    doc = share_text(reply, (Message("user", "Describe Paris."),), service.identity, time.time()).to_json()
    doc["messages"][0]["content"] = "Describe \ud800 Paris."
    item_id = ShareStore(app_store).put(doc)
    page = open_page(browser, f"{app_server}?r={item_id}")
    page.locator("#gs-shared .gs-shared-missing").wait_for(timeout=60_000)
    assert "lone surrogate (U+D800" in page.locator("#gs-shared").inner_text()
    send(page, "Say OK.")
    wait_reply(page)
    page.context.close()


def step_path_len(page) -> int:
    return page.locator("#gs-step-path .gs-token").count()


def wait_path(page, n: int) -> None:
    page.wait_for_function(f"() => document.querySelectorAll('#gs-step-path .gs-token').length >= {n}",
                           timeout=120_000)


def first_sampled_width(page) -> str:
    return page.locator("#gs-step-dist .gs-step-row").first.locator(".gs-stage-2").get_attribute("style")


def test_step_by_hand_greedy_clicked_typed_then_finish(browser, app_server):
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    page.goto(app_server)
    page.get_by_role("tab", name="Step").click()
    page.locator("#gs-step-msg textarea").fill("Write a very long story about a dragon who learns to paint.")
    page.locator("#gs-step-start").click()
    takes = page.locator("#gs-step-dist button.gs-step-take")
    takes.first.wait_for(timeout=120_000)
    assert takes.count() == 20 and "p(sampling picks the greedy token)" in page.locator("#gs-step-dist").inner_text()
    greedy_text = takes.first.inner_text()
    page.locator("#gs-step-greedy").click()  # 1: the greedy token
    wait_path(page, 1)
    assert page.locator("#gs-step-path .gs-token").first.inner_text().strip() == greedy_text.strip()
    assert "model's own greedy choice" in page.locator("#gs-step-path").inner_text()
    page.locator("#gs-step-dist button.gs-step-take").nth(2).click()  # 2: a listed, not greedy, token
    wait_path(page, 2)
    page.wait_for_function("() => document.querySelector('#gs-step-path .gs-step-path').dataset.chosen === '1'",
                           timeout=60_000)
    page.locator("#gs-step-text textarea, #gs-step-text input").first.fill(" Paris")  # 3: a typed word
    page.locator("#gs-step-force").click()
    page.wait_for_function("() => document.querySelector('#gs-step-path').innerText.includes('Paris')",
                           timeout=60_000)
    chosen = page.locator("#gs-step-path .gs-step-path").get_attribute("data-chosen").split(",")
    assert chosen[0] == "1" and len(chosen) >= 2
    assert page.locator("#gs-step-path .gs-token.gs-picked").count() == len(chosen)  # outlined
    n = step_path_len(page)
    # the sampler's bars follow the temperature
    before = first_sampled_width(page)
    fill_number(page, "number input for temperature (0 = greedy)", "0.3")
    page.wait_for_function(f"() => {{ const r = document.querySelector('#gs-step-dist .gs-step-row .gs-stage-2');"
                           f" return r && r.getAttribute('style') !== {before!r}; }}", timeout=60_000)
    assert "temperature 0.3" in page.locator("#gs-step-dist").inner_text()
    page.locator("#gs-step-along input").check()  # the lens along the path, on request
    page.locator("#gs-step-path .gs-tip-lens").first.wait_for(state="attached", timeout=60_000)
    assert page.locator("#gs-step-path .gs-tip-lens").count() == n
    if os.environ.get("GREEDYSCORE_SCREENSHOT"):  # the sampler's bars and the path with its picks, for the README
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.mouse.move(0, 0)
        top, bottom = (page.locator(sel).bounding_box() for sel in ("#gs-step-temp", "#gs-step-path"))
        page.screenshot(path=str(ROOT / "assets" / "step.png"), full_page=True,
                        clip={"x": 0, "y": top["y"] - 8, "width": 1280,
                              "height": bottom["y"] + bottom["height"] - top["y"] + 16})
    page.get_by_text("Settings").first.click()
    fill_number(page, "number input for max new tokens", "110")  # a path long enough for its map
    page.locator("#gs-step-finish").click()
    page.wait_for_function("() => document.querySelector('#gs-step-dist').innerText.includes('nothing follows')",
                           timeout=180_000)
    assert step_path_len(page) > n
    assert page.locator("#gs-step-path .gs-step-path").get_attribute("data-chosen").split(",") == chosen
    page.locator("#gs-step-chart .js-plotly-plot").first.wait_for(timeout=30_000)
    assert "expected tokens before a sampled reply first differs" in page.locator("#gs-step-lens").inner_text()
    assert step_path_len(page) > 80  # the map above the finished path: a cell jumps to its token, the chart follows
    k = page.evaluate("""() => { const has = i => document.querySelector(`#gs-step-path .gs-token[data-i="${i}"]`);
        for (let k = 60; ; k++) if (has(k) && has(k + 1)) return k; }""")
    page.locator("#gs-step-path .gs-map-cells > span").nth(k).click()
    page.wait_for_function(f"() => ({FOCUSED})() === {k}", timeout=5000)
    page.wait_for_function(f"() => ({MAP_MARK.replace('gs-reply-chart', 'gs-step-chart')})() === {k}",
                           timeout=10_000)
    page.wait_for_function("() => document.querySelector('#gs-step-json a') !== null", timeout=30_000)  # export
    page.locator("#gs-step-share").click()  # the path, picks and all, as a link
    page.wait_for_function("() => [...document.querySelectorAll('#gs-share-link input.gs-share-url')].some("
                           "e => e.offsetParent && e.value.includes('?r='))", timeout=30_000)
    page.close()


def test_step_through_the_chats_reply_from_a_token(browser, app_server):
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(app_server)
    send(page, "What is the capital of France?")
    wait_reply(page)
    chat_tokens = page.locator("#gs-reply .gs-token").evaluate_all("els => els.map(e => e.dataset.id)")
    page.get_by_role("tab", name="Step").click()
    at = page.get_by_label("from its token (0 = its start)")
    at.fill("3")
    at.press("Tab")
    page.locator("#gs-step-from-chat").click()
    wait_path(page, 3)
    path = page.locator("#gs-step-path .gs-token").evaluate_all("els => els.map(e => e.dataset.id)")
    assert path == chat_tokens[:3]
    page.locator("#gs-step-dist button.gs-step-take").first.wait_for(timeout=60_000)
    page.close()


# --- the map above a long reply --------------------------------------------------------------------
MAP_MARK = """() => { const gd = document.querySelector('#gs-reply-chart .js-plotly-plot');
    const s = gd && gd.layout && (gd.layout.shapes || []).find(s => s.name === 'gs-selected');
    return s ? s.x0 + 0.5 : null; }"""
FOCUSED = """() => { const a = document.activeElement;
    return a && a.classList.contains('gs-jumped') ? +a.dataset.i : null; }"""


def test_map_of_a_long_reply_jumps_to_a_token_and_marks_the_chart(browser, app_server):
    """A reply of more than 80 tokens gets a map; a click on a cell, or the keyboard (focus the map,
    ArrowRight, Enter), focuses that token in the reply and moves the chart's selection to it."""
    page = browser.new_page(viewport={"width": 1280, "height": 1200})
    page.goto(app_server)
    page.locator("#gs-msg textarea").wait_for()
    page.get_by_text("Settings").first.click()
    fill_number(page, "number input for max new tokens", "160")
    send(page, "Write a very long story about a dragon who learns to paint. Go on for many paragraphs.")
    page.locator("#gs-reply .gs-map").wait_for(timeout=240_000)
    n = page.locator(TURN_TOKENS).evaluate_all("els => els.length")
    cells = page.locator("#gs-reply .gs-map-cells > span")
    assert cells.count() == int(page.locator("#gs-reply .gs-map").get_attribute("data-n")) > 80 and n > 40
    page.locator("#gs-reply-chart .js-plotly-plot .bars path").first.wait_for(timeout=60_000)
    # a token k whose own span starts at k and at k + 1 (not inside a split character), late in the reply
    k = page.evaluate("""() => { const has = i => document.querySelector(`#gs-reply .gs-token[data-i="${i}"]`);
        for (let k = 70; ; k++) if (has(k) && has(k + 1)) return k; }""")
    page.evaluate("window.scrollTo(0, 0)")
    cells.nth(k).click()
    page.wait_for_function(f"() => ({FOCUSED})() === {k}", timeout=5000)
    top = page.locator(f'#gs-reply .gs-token[data-i="{k}"]').evaluate("el => el.getBoundingClientRect().top")
    assert 0 < top < page.evaluate("innerHeight")  # scrolled into view
    page.wait_for_function(f"() => ({MAP_MARK})() === {k}", timeout=10_000)
    # keyboard: the map is reachable, its cursor moves with the arrows, Enter jumps
    strip = page.locator("#gs-reply .gs-map-cells")
    strip.focus()
    page.keyboard.press("ArrowRight")
    assert strip.get_attribute("aria-valuenow") == str(k + 1)
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => ({FOCUSED})() === {k + 1}", timeout=5000)
    page.wait_for_function(f"() => ({MAP_MARK})() === {k + 1}", timeout=10_000)
    if os.environ.get("GREEDYSCORE_SCREENSHOT"):  # for the README: the map, the reply under it, the jumped token
        page.mouse.move(1275, 5)  # no hover tooltip beside the focused token's
        page.locator("#gs-reply .gs-turn-reply .gs-bubble").screenshot(path=str(ROOT / "assets" / "map.png"))
    page.close()
