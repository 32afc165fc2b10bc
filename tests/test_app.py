"""The launched app over real HTTP with gradio_client: endpoints, escaping, errors, load."""

from __future__ import annotations

import base64
import json
import math
import random
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser

import pytest
from gradio_client import Client

HOSTILE = '<script>alert("x")</script> <img src=x onerror=alert(1)> "quoted" & \'single\' &amp;'
VIEW = ("probability", "cividis", 0.5)  # colour by, palette, threshold


@pytest.fixture(scope="module")
def client(app_server) -> Client:
    return Client(app_server, verbose=False)


def array_len(a) -> int:
    """Length of a Plotly JSON array: a list, or a typed array {"dtype", "bdata": base64}."""
    if isinstance(a, dict):
        return len(base64.b64decode(a["bdata"])) // int(a["dtype"][1:])
    return len(a)


def chat(client: Client, message: str, history=None, max_new=8, top_k=3, verify=True, view=VIEW):
    return client.predict(message, history or [], max_new, top_k, verify, *view, api_name="/chat")


def test_chat_endpoint(client, engine):
    html, fig, tokens, stats = chat(client, "What is the capital of France?", max_new=12)
    assert html.count('class="gs-token') >= 1 and "data-prob=" in html
    assert tokens["model"] == "SmolLM2-135M-Instruct" and tokens["tokens"]
    assert len(tokens["tokens"][0]["top"]) == 3
    assert "perplexity" in stats.lower()
    plot = json.loads(fig["plot"]) if isinstance(fig, dict) else json.loads(fig)
    bars = [trace for trace in plot["data"] if trace["type"] == "bar"]
    assert len(bars) == 1 and array_len(bars[0]["y"]) == len(tokens["tokens"])  # one bar per token


def test_chat_with_history(client, engine):
    """The history reaches the model: the prompt it got is the template of history + message."""
    history = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello Ada!"}]
    _, _, tokens, _ = chat(client, "What is my name?", history=history, max_new=8)
    from greedyscore.types import Message

    asked = [Message(h["role"], h["content"]) for h in history] + [Message("user", "What is my name?")]
    assert tokens["prompt_token_ids"] == engine.tokenizer.prompt_ids(asked)
    _, _, alone, _ = chat(client, "What is my name?", max_new=8)
    assert alone["prompt_token_ids"] == engine.tokenizer.prompt_ids(asked[-1:]) != tokens["prompt_token_ids"]


def test_every_api_parameter_after_the_first_has_a_default(client):
    html, fig, tokens, stats = client.predict("Say OK.", api_name="/chat")
    assert tokens["tokens"] and len(tokens["tokens"]) <= 128 and len(tokens["tokens"][0]["top"]) == 5
    assert not tokens["verified"]
    _, _, scored, _ = client.predict("Paris is lovely.", api_name="/score_text")
    assert scored["text"] == "Paris is lovely." and len(scored["tokens"][0]["top"]) == 5
    params = {e: client.view_api(return_format="dict")["named_endpoints"][e]["parameters"]
              for e in ("/chat", "/score_text")}
    assert all(p["parameter_has_default"] for e in params for p in params[e][1:])


def test_stats_and_histogram_follow_the_colour_mode(client):
    _, _, _, stats = chat(client, "What is the capital of France?", max_new=8,
                          view=("margin (p1 − p2)", "viridis", 0.5))
    assert "below threshold (by margin)" in stats and "least confident (by margin)" in stats


def test_header_says_what_the_scores_come_from(app_server, engine):
    import urllib.request

    config = urllib.request.urlopen(app_server + "config", timeout=10).read().decode()
    from greedyscore.engines import native

    # and whether the C kernel ran, and why (the suite runs it wherever it builds: GREEDYSCORE_NATIVE=1)
    assert engine.info.score_source == f"float32 logits (cpu), softmax in float32; {native.decision('float32').note()}"
    assert "CPU kernel (-march=native) used: GREEDYSCORE_NATIVE=1" in engine.info.score_source
    assert engine.info.score_source in config


def start_tags(markup: str) -> set[str]:
    tags: set[str] = set()

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.add(tag)
            for name, _ in attrs:
                tags.add(f"@{name}")

    Collect().feed(markup)
    return tags


def test_score_text_escapes_hostile_strings(client):
    html, fig, tokens, stats = client.predict(HOSTILE, "", 3, *VIEW, api_name="/score_text")
    assert tokens["text"] == HOSTILE
    for out in (html, stats):
        found = start_tags(out)
        assert not {"script", "img", "@onerror", "@src"} & found, found
    assert html.count("&lt;") >= 4 and "&amp;" in html and "&quot;" in html


def test_hostile_chat_message_is_escaped(client):
    html, _, tokens, stats = chat(client, HOSTILE, max_new=16)
    for out in (html, stats):
        assert not {"script", "img", "@onerror", "@src"} & start_tags(out)


@pytest.mark.parametrize(
    "args,needle",
    [
        (("", [], 8, 3, False, *VIEW), "empty"),
        (("hi", [], 0, 3, False, *VIEW), "max_new_tokens"),
        (("hi", [], 8, 99, False, *VIEW), "top_k"),
        (("hi", [], 8, 3, False, "rainbow", "cividis", 0.5), "colour"),
        (("hi", [], 8, 3, False, "probability", "cividis", 7.0), "threshold"),
        (("x" * 100_000, [], 8, 3, False, *VIEW), "context"),
        (("hi", [{"role": "wizard", "content": "?"}], 8, 3, False, *VIEW), "role"),
        (("hi", [], True, 3, False, *VIEW), "max_new_tokens must be a whole number"),
        (("hi", [], 2.5, 3, False, *VIEW), "max_new_tokens must be a whole number"),
        (("hi", [], 8, 3, False, "probability", "cividis", "abc"), "threshold must be a number"),
    ],
)
def test_bad_input_gives_clear_error_and_keeps_serving(client, args, needle):
    with pytest.raises(Exception) as info:
        client.predict(*args, api_name="/chat")
    assert needle in str(info.value).lower()
    _, _, tokens, _ = chat(client, "Say OK.", max_new=3)
    assert tokens["tokens"]


def test_load_sixteen_clients(app_server, engine):
    """16 concurrent clients x 3 requests, normal and hostile: every one answered, scores right."""
    prompts = ["What is 2+2?", "你好", "Name a colour.", "🍎 or 🍌?", "<script>alert(1)</script>",
               "ctrl \x00\x07\x1b[31m chars", "", "x" * 100_000, "Write one word."]
    rng = random.Random(0)
    jobs = [(c, rng.choice(prompts)) for c in range(16) for _ in range(3)]
    clients = [Client(app_server, verbose=False) for _ in range(16)]

    def run(job):
        c, prompt = job
        try:
            return prompt, chat(clients[c], prompt, max_new=6, top_k=2, verify=False)[2]
        except Exception as ex:  # noqa: BLE001
            return prompt, ex

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, jobs, timeout=600))
    assert len(results) == len(jobs)
    for prompt, res in results:
        if isinstance(res, Exception):
            assert prompt in ("", "x" * 100_000), (prompt, res)  # only the bad inputs fail
            assert "empty" in str(res).lower() or "context" in str(res).lower()
            continue
        ids = [t["id"] for t in res["tokens"]]
        solo = engine.score_ids(res["prompt_token_ids"], ids, 2)
        for t, lp in zip(res["tokens"], solo.logprob.tolist()):
            assert abs(t["prob"] - math.exp(lp)) < 1e-4
    _, _, tokens, _ = chat(clients[0], "Still there?", max_new=3)
    assert tokens["tokens"]


def test_fork_endpoint(client, engine):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    _, _, original, _ = client.predict("What is the capital of France?", api_name="/chat")
    ids = [t["id"] for t in original["tokens"]]
    runner_up = original["tokens"][5]["top"][1]["id"]
    html, fig, tokens, stats = client.predict(messages, ids, 5, runner_up, api_name="/fork")
    assert tokens["forked_at"] == 5 and [t["id"] for t in tokens["tokens"][:5]] == ids[:5]
    assert tokens["tokens"][5]["id"] == runner_up and "forked at" in stats
    assert html.count("gs-shared") == 5 and html.count("gs-diverge") == 1
    _, _, fresh, _ = client.predict(messages, [], 5, runner_up, api_name="/fork")  # a fresh greedy original
    assert [t["id"] for t in fresh["tokens"][:6]] == [t["id"] for t in tokens["tokens"][:6]]
    with pytest.raises(Exception, match="at must be a position in the reply"):
        client.predict(messages, ids, 99, runner_up, api_name="/fork")
    with pytest.raises(Exception, match="unknown token id"):
        client.predict(messages, ids, 1, 10**9, api_name="/fork")


def test_calibration_endpoint(client, service):
    from greedyscore.examples import CALIBRATION_SAMPLE
    from greedyscore.types import Settings

    cal, fig, summary = client.predict(CALIBRATION_SAMPLE, api_name="/calibration")  # every other setting defaulted
    want = service.score_text(CALIBRATION_SAMPLE, Settings(top_k=5)).calibration
    assert cal["n"] == want.n >= 400 and abs(cal["ece"] - want.ece) < 1e-9
    assert [b["n"] for b in cal["bins"]] == [b.n for b in want.bins]
    assert "ECE" in summary and "too few" not in summary
    _, _, short, _ = client.predict("Hello there.", api_name="/score_text")
    assert short["calibration"]["n"] == len(short["tokens"])
    assert "too few" in client.predict("Hello there.", api_name="/calibration")[2]


def test_compare_endpoint(client):
    text = "The capital of France is Paris."
    page, fig, cmp = client.predict(text, api_name="/compare")  # default: bfloat16, every other setting defaulted
    assert cmp["b"].endswith("(bfloat16)") and cmp["same_tokens"]
    assert "".join(s["text"] for s in cmp["spans"]) == text and "gs-cmp-strip" in page
    _, _, sp = client.predict(text, "Name a capital.", "another system prompt", "", "Answer in French.",
                              api_name="/compare")
    assert sp["a"] == "system prompt A" and any(abs(s["delta"]) > 1e-3 for s in sp["spans"])
    n = sum(s["tokens_a"] for s in sp["spans"])  # one tokenizer: a divergence step per token, KL >= 0
    assert len(sp["steps"]) == n and all(s["kl"] >= 0 and 0 <= s["overlap"] <= 1 for s in sp["steps"])
    assert sp["mean_kl"] > 0 and "gs-cmp-kl" in page
    with pytest.raises(Exception, match="compare-model"):
        client.predict(text, "", "another model", api_name="/compare")


@pytest.mark.parametrize("argv,env,needle", [
    (["--share-ttl", "-1"], {}, "--share-ttl"),
    (["--share-ttl", "0"], {}, "--share-ttl"),
    (["--share-ttl", "nan"], {}, "--share-ttl"),
    (["--share-ttl", "inf"], {}, "--share-ttl"),
    ([], {"GREEDYSCORE_SHARE_TTL": "-1"}, "GREEDYSCORE_SHARE_TTL"),
    (["--share-max-mb", "inf"], {}, "--share-max-mb"),
    (["--share-max-mb", "-1"], {}, "--share-max-mb"),
    ([], {"GREEDYSCORE_SHARE_MAX_MB": "1e999"}, "GREEDYSCORE_SHARE_MAX_MB"),
    (["--share-rate", "0"], {}, "--share-rate"),
    (["--share-rate", "1.5"], {}, "--share-rate"),
    (["--trusted-proxies", "proxy.example"], {}, "--trusted-proxies"),
])
def test_bad_app_limits_are_usage_errors_that_name_them(argv, env, needle, monkeypatch, capsys):
    """`--share-max-mb inf` was a traceback; a negative TTL was accepted from the environment."""
    import app

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as info:
        app.parse_args(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and needle in err, err
    assert "must be" in err or "not an IP address" in err, err


def test_app_limits_that_are_fine_are_taken():
    import app

    args = app.parse_args(["--share-ttl", "0.5", "--share-max-mb", "20", "--share-rate", "3",
                           "--trusted-proxies", " 10.0.0.1, 10.1.0.0/16 ,::1"])
    assert (args.share_ttl, args.share_max_mb, args.share_rate) == (0.5, 20.0, 3.0)
    assert args.trusted_proxies == "10.0.0.1,10.1.0.0/16,::1"
    assert app.parse_args([]).trusted_proxies == ""  # no proxy is trusted unless named


def raw_call(app_server: str, endpoint: str, body: str) -> tuple[str, str]:
    """Gradio's HTTP call protocol with a hand-written JSON body (gradio_client cannot send a lone
    surrogate: it fails to encode one before sending). -> (last event, its data)."""
    import urllib.request

    base = app_server + "gradio_api/call/" + endpoint
    request = urllib.request.Request(base, data=body.encode("ascii"), headers={"Content-Type": "application/json"})
    event_id = json.loads(urllib.request.urlopen(request, timeout=30).read())["event_id"]
    stream = urllib.request.urlopen(f"{base}/{event_id}", timeout=300).read().decode("utf-8")
    events = [block.split("\n") for block in stream.strip().split("\n\n")]
    last = events[-1]
    return last[0].removeprefix("event: "), last[1].removeprefix("data: ")


SURROGATE_CALLS = {  # JSON's \ud800 escape is valid JSON that decodes to a lone surrogate; every value given
    "chat": '["a\\ud800b", [], 4, 3, false, "prob", "cividis", 0.5]',
    "chat history": '["hi", [{"role": "user", "content": "\\udfff"}], 4, 3, false, "prob", "cividis", 0.5]',
    "fork": '[[{"role": "user", "content": "x\\ud83d"}], [1, 2], 1, 3, 4, 3, false, "prob", "cividis", 0.5]',
    "score_text": '["a\\udc80", "", 3, "prob", "cividis", 0.5]',
    "calibration": '["The cat sat on the mat. The dog sat on the log.", "\\ud800", 3]',
    "compare": '["a\\ud800", "", "another system prompt", "x", "y", 3, null]',
    "share": '[{"tokens": [{"id": 1, "text": "\\ud800", "prob": 0.5, "logprob": -0.6931471805599453, "rank": 1, '
             '"entropy": 0.7, "margin": 0.0, "top": []}]}]',
}


@pytest.mark.parametrize("name", SURROGATE_CALLS)
def test_a_lone_surrogate_over_http_gets_a_message_and_the_app_keeps_serving(client, app_server, name):
    event, data = raw_call(app_server, name.split()[0], f'{{"data": {SURROGATE_CALLS[name]}}}')
    assert event == "error"
    assert "lone surrogate (U+D" in json.loads(data)["error"]
    _, _, tokens, _ = chat(client, "Say OK.", max_new=3)
    assert tokens["tokens"]


def test_a_share_over_the_page_budget_gets_a_message_made_or_stored(client, app_store):
    """Sharing a result whose page would be slow is refused with the budget named; one stored over
    it (by an older greedyscore, another process) opens as a message, not an 11 s page."""
    from greedyscore.sharing.document import MAX_SHARED_CELLS
    from greedyscore.sharing.store import ShareStore

    _, _, scored, _ = client.predict("The cat sat on the mat by the door.", "", 20, *VIEW, api_name="/score_text")
    cells = len(scored["tokens"]) * 21
    scored["tokens"] = scored["tokens"] * (MAX_SHARED_CELLS // cells + 1)
    with pytest.raises(Exception, match=f"more than the {MAX_SHARED_CELLS:,} \\(tokens and alternatives\\) a shared "
                                        "page shows without making its visitors wait: share a shorter reply"):
        client.predict(scored, api_name="/share")
    doc = {"format": 1, "kind": "text", "created": 1.0, "settings": {"max_new_tokens": 1, "top_k": 20},
           "model": {"name": "m", "backend": "b", "score_source": "s", "greedyscore": "0"}, "messages": [],
           "reply": scored}
    item_id = ShareStore(app_store).put(doc)
    with pytest.raises(Exception, match="a shared page shows without making its visitors wait"):
        client.predict(item_id, *VIEW, api_name="/shared")
    assert client.predict(scored | {"tokens": scored["tokens"][:3]}, api_name="/share")["id"]  # still sharing
