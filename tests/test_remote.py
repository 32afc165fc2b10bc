"""The remote engine against real servers on loopback: vLLM's CPU build serving the embedded model,
LMDeploy's proxy in front of two vLLM nodes with the demo behind it, and a stand-in only for what
a CPU cannot run (LMDeploy's engines: tests/lmdeploy_api_standin.py).

Every number is checked against the in-process transformers engine on the same model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from lmdeploy_api_standin import StandIn
from servers import VLLM_PYTHON, free_port, proxy_command, start, stop, vllm_command, wait_ready
from test_browser import send, wait_reply

from greedyscore.engines.openai import HTTPOptions, OpenAIEngine
from greedyscore.errors import EngineUnavailable, ModelFailed, ModelNotFound, ServerRefused
from greedyscore.models import EMBEDDED_NAME, resolve_model
from greedyscore.render.html import tooltip_html
from greedyscore.service import Service
from greedyscore.types import Message, ScoredReply, Settings

REQUIRE = os.environ.get("GREEDYSCORE_REQUIRE_SERVERS") == "1"  # `make test`: never skip these
PROMPTS = {
    "english": [Message("user", "What is the capital of France?")],
    "chinese": [Message("user", "你好，请介绍一下北京。")],
    "multi-turn": [Message("system", "You are terse."), Message("user", "My name is Ada."),
                   Message("assistant", "Hello Ada!"), Message("user", "What is my name?")],
}
FAST_FAIL = HTTPOptions(retries=1, backoff_s=0.05)


@dataclass
class Node:
    proc: subprocess.Popen
    url: str


@pytest.fixture(scope="module")
def nodes(engine) -> list[Node]:
    """Two vLLM servers on the embedded model (its converted dir), started side by side."""
    if not VLLM_PYTHON.exists():
        if REQUIRE:
            pytest.fail("no .venv-vllm: run `make vllm`")
        pytest.skip("no .venv-vllm (`make vllm`; `make test` builds it and never skips these)")
    model_dir = resolve_model(None)[1]
    started = []
    for i in range(2):
        port = free_port()
        cmd, env = vllm_command(model_dir, port, EMBEDDED_NAME)
        started.append(Node(start(cmd, "", f"vllm-{i}", env=env, wait=False), f"http://127.0.0.1:{port}"))
    try:
        for node in started:
            wait_ready(node.proc, f"{node.url}/v1/models", timeout_s=600)
        yield started
    finally:
        for node in started:
            stop(node.proc)


@pytest.fixture(scope="module")
def remote(nodes) -> Service:
    return Service(OpenAIEngine.load(nodes[0].url))


@pytest.fixture(scope="module")
def remote_full(nodes) -> Service:
    return Service(OpenAIEngine.load(nodes[0].url + "/", full_vocab=True))


def assert_same_reply(got: ScoredReply, want: ScoredReply, tol: float = 1e-4) -> None:
    assert [t.id for t in got.tokens] == [t.id for t in want.tokens]
    assert got.text == want.text and got.finish_reason == want.finish_reason
    for g, w in zip(got.tokens, want.tokens):
        assert abs(g.prob - w.prob) < tol, (g.text, g.prob, w.prob)
        assert abs(g.margin - w.margin) < tol and g.rank == w.rank and g.text == w.text
        assert [a.id for a in g.top if a.prob > 1e-3] == [a.id for a in w.top if a.prob > 1e-3]


# --- vLLM -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", PROMPTS)
def test_same_tokens_and_probabilities_as_the_local_engine(remote, service, case):
    settings = Settings(max_new_tokens=24, top_k=5)
    got, want = remote.chat(PROMPTS[case], settings), service.chat(PROMPTS[case], settings)
    assert got.prompt_token_ids == want.prompt_token_ids  # the server's template made our exact ids
    assert_same_reply(got, want)
    assert got.backend == "openai" and "top-k only" in got.score_source


def test_whole_vocabulary_gives_the_exact_entropy(remote_full, service):
    settings = Settings(max_new_tokens=12, top_k=3)
    got, want = remote_full.chat(PROMPTS["english"], settings), service.chat(PROMPTS["english"], settings)
    assert_same_reply(got, want)
    for g, w in zip(got.tokens, want.tokens):
        assert g.entropy_max is None and abs(g.entropy - w.entropy) < 1e-3


def test_top_k_only_gives_an_interval_that_holds_the_true_entropy(remote, service):
    settings = Settings(max_new_tokens=24, top_k=3)
    got, want = remote.chat(PROMPTS["chinese"], settings), service.chat(PROMPTS["chinese"], settings)
    wide = 0
    for g, w in zip(got.tokens, want.tokens):
        high = g.entropy if g.entropy_max is None else g.entropy_max
        assert g.entropy - 1e-3 <= w.entropy <= high + 1e-3, (g.text, g.entropy, w.entropy, high)
        wide += high > g.entropy + 0.01
    assert wide > len(got.tokens) // 2
    shown = next(t for t in got.tokens if t.entropy_max is not None)
    assert "nats (top-k only)" in tooltip_html(shown)  # never one made-up number
    i = got.tokens.index(shown)
    assert got.to_json()["tokens"][i]["entropy_max"] == shown.entropy_max > shown.entropy


def test_verification_through_prompt_logprobs(remote, service):
    settings = Settings(max_new_tokens=16, top_k=3, verify=True)
    got, want = remote.chat(PROMPTS["english"], settings), service.chat(PROMPTS["english"], settings)
    assert got.verified and not got.notes
    for g, w in zip(got.tokens, want.tokens):
        assert abs(g.rescored_prob - w.rescored_prob) < 1e-4 and g.rescored_rank == w.rescored_rank == 1


def test_scored_text_and_forks_match_the_local_engine(remote, service):
    settings = Settings(max_new_tokens=10, top_k=3)
    text = "The quick brown fox jumps over the lazy dog. 北京是中国的首都。"
    got, want = remote.score_text(text, settings), service.score_text(text, settings)
    assert [t.id for t in got.tokens] == [t.id for t in want.tokens]
    for g, w in zip(got.tokens, want.tokens):  # teacher forcing: ranks far from 1, exact from the server
        assert abs(g.logprob - w.logprob) < 1e-3 and g.rank == w.rank
    reply = service.chat(PROMPTS["english"], settings)
    ids = [t.id for t in reply.tokens]
    swap = reply.tokens[1].top[1].id
    assert_same_reply(remote.fork(PROMPTS["english"], ids, 1, swap, settings),
                      service.fork(PROMPTS["english"], ids, 1, swap, settings))


def test_stop_closes_the_http_stream(remote):
    cancel, deltas, t0 = threading.Event(), 0, time.perf_counter()
    for event in remote.stream([Message("user", "Write a long story about a dragon.")],
                               Settings(max_new_tokens=400), cancel):
        if isinstance(event, ScoredReply):
            break
        deltas += bool(event.delta)
        if deltas == 3:
            cancel.set()
    assert event.finish_reason == "abort" and 3 <= len(event.tokens) < 40
    assert time.perf_counter() - t0 < 20
    url = remote.engine.client.base_url
    deadline = time.time() + 10  # the server aborted the request (it saw the connection close)
    while "vllm:num_requests_running" not in (metrics := running(url)) or metrics["vllm:num_requests_running"]:
        assert time.time() < deadline, metrics
        time.sleep(0.2)
    assert remote.chat(PROMPTS["english"], Settings(max_new_tokens=4)).tokens  # the server is fine


def running(base_url) -> dict[str, float]:
    """vLLM's Prometheus gauges of running/waiting requests."""
    with urllib.request.urlopen(f"{base_url}metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    out: dict[str, float] = {}
    for line in lines:
        name = line.split("{")[0].split(" ")[0]
        if name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_wrong_model_name_and_dead_server_are_clear(nodes):
    with pytest.raises(ModelNotFound, match=f"no model 'nope'.*{EMBEDDED_NAME}"):
        OpenAIEngine.load(nodes[0].url, model="nope")
    with pytest.raises(EngineUnavailable, match="cannot reach"):
        OpenAIEngine.load(f"http://127.0.0.1:{free_port()}", options=FAST_FAIL)
    cli = subprocess.run([sys.executable, "-m", "greedyscore", "chat", "--base-url", nodes[0].url, "--model", "nope",
                          "hi"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "no model 'nope'" in cli.stderr and "Traceback" not in cli.stderr


def test_the_page_says_what_a_top_k_server_gives(nodes, browser):
    """The demo in chromium on a vLLM node: header, tooltip interval, chart band."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    app = start([sys.executable, "app.py", "--base-url", nodes[0].url, "--port", str(port)], url, "app-remote-page",
                env={"GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(url)
        header = page.locator("#gs-header")
        header.wait_for()
        assert "openai" in header.inner_text() and "top-k only" in header.inner_text()
        send(page, "What is the capital of France?")
        wait_reply(page)
        token = page.locator("#gs-reply .gs-token").nth(1)
        token.hover()
        tip = token.locator(".gs-tip")
        tip.wait_for(state="visible", timeout=5000)
        assert "nats (top-k only)" in tip.inner_text()
        page.locator("#gs-reply-chart .js-plotly-plot .legendtext").first.wait_for(timeout=30_000)
        legend = page.locator("#gs-reply-chart .legendtext").evaluate_all("els => els.map(e => e.textContent)")
        assert any("upper bound" in t for t in legend)
    finally:
        stop(app)


# --- LMDeploy (stand-in for its GPU engines) --------------------------------------------------------
@pytest.fixture(scope="module")
def lmdeploy_api(engine):
    with StandIn(engine, free_port()) as api:
        yield api


def lmdeploy_service(api, mode: str) -> Service:
    return Service(OpenAIEngine.load(api.url, model=mode, tokenizer=resolve_model(None)[1]))


def test_lmdeploy_pytorch_raw_logprobs_with_the_chosen_token_merged_back(lmdeploy_api, service):
    settings = Settings(max_new_tokens=12, top_k=4, verify=True)
    got = lmdeploy_service(lmdeploy_api, "raw").chat(PROMPTS["english"], settings)
    want = service.chat(PROMPTS["english"], settings)
    assert_same_reply(got, want)
    assert all(len(t.top) == 4 and t.top[0].id == t.id for t in got.tokens)  # k-1 sent, k shown
    assert not got.verified and any("verification unavailable" in n for n in got.notes)


def test_busy_answers_are_retried_before_the_first_token(lmdeploy_api, service):
    settings = Settings(max_new_tokens=6, top_k=3)
    got = lmdeploy_service(lmdeploy_api, "busy").chat(PROMPTS["english"], settings)
    assert_same_reply(got, service.chat(PROMPTS["english"], settings))
    assert lmdeploy_api.app.state.busy_calls == 2  # one 429, then served
    with pytest.raises(ModelFailed, match="HTTP 429"):  # no retries left: a clear error, not a hang
        Service(OpenAIEngine.load(lmdeploy_api.url, model="busy", tokenizer=resolve_model(None)[1],
                                  options=HTTPOptions(retries=0))).chat(PROMPTS["english"], settings)


def test_stop_before_the_first_byte_aborts_at_once(lmdeploy_api):
    """A request waiting for headers (queued behind a proxy, in prefill): Stop shuts its socket."""
    svc = lmdeploy_service(lmdeploy_api, "slow")
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.perf_counter()
    reply = svc.chat(PROMPTS["english"], Settings(max_new_tokens=8), cancel)
    assert reply.finish_reason == "abort" and not reply.tokens and time.perf_counter() - t0 < 5
    assert lmdeploy_api.app.state.slow_started.is_set()  # the request had reached the server


@pytest.mark.parametrize("mode, error, needle", [
    ("unconfigured", ServerRefused, "--logprobs-mode raw_logprobs"),  # the fix, not "bad input"
    ("no-logprobs", ServerRefused, "does not return logprobs"),  # never a silently empty reply
    ("cut", ModelFailed, "ended before the reply did"),  # never mistaken for Stop
])
def test_servers_that_fall_short_give_clear_errors(lmdeploy_api, mode, error, needle):
    svc = Service(OpenAIEngine.load(lmdeploy_api.url, model=mode, tokenizer=resolve_model(None)[1], options=FAST_FAIL))
    with pytest.raises(error, match=needle):
        svc.chat(PROMPTS["english"], Settings(max_new_tokens=6))


def test_vocabulary_names_map_to_their_ids_including_the_unk_token(lmdeploy_api, engine):
    remote = OpenAIEngine.load(lmdeploy_api.url, model="raw", tokenizer=resolve_model(None)[1])
    unk = engine.tokenizer.hf.unk_token
    assert remote._token_id(unk) == engine.tokenizer.hf.convert_tokens_to_ids(unk)  # <|endoftext|> is id 0, real
    assert remote._token_id("token_id:42") == 42
    with pytest.raises(ModelFailed, match="--tokenizer"):
        remote._token_id("\u2603 not a token \u2603")


@pytest.mark.parametrize("mode, needle", [("turbomind", "TurboMind"), ("penalised", "not the most likely")])
def test_fake_logprobs_are_refused_with_the_fix(lmdeploy_api, mode, needle):
    svc = lmdeploy_service(lmdeploy_api, mode)
    with pytest.raises(ServerRefused, match=needle) as info:
        svc.chat(PROMPTS["english"], Settings(max_new_tokens=8))
    assert "--backend pytorch --logprobs-mode raw_logprobs" in str(info.value)
    assert lmdeploy_service(lmdeploy_api, "raw").chat(PROMPTS["english"], Settings(max_new_tokens=2)).tokens


# --- a cluster: LMDeploy's proxy, two vLLM nodes, the demo in front (kills node 1: keep last) -----------
def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def post_json(url: str, body: dict) -> str:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode()


def test_demo_through_the_proxy_survives_a_node_killed_mid_stream(nodes, service):
    from gradio_client import Client

    port = free_port()
    proxy_url = f"http://127.0.0.1:{port}"
    proxy = start(proxy_command(port), f"{proxy_url}/nodes/status", "lmdeploy-proxy",
                  env={"LMDEPLOY_CONTROLLER_HEART_BEAT_EXPIRATION": "3"})  # drops a dead node within 3 s
    app_port = free_port()
    app = None
    try:
        for node in nodes:
            assert "Added successfully" in post_json(f"{proxy_url}/nodes/add", {"url": node.url})
        app = start([sys.executable, "app.py", "--backend", "openai", "--base-url", f"{proxy_url}/v1",
                     "--port", str(app_port), "--concurrency", "8"], f"http://127.0.0.1:{app_port}/", "app-remote",
                    env={"GRADIO_ANALYTICS_ENABLED": "False"})
        client = Client(f"http://127.0.0.1:{app_port}/", verbose=False)
        questions = [f"Name a colour number {i}." for i in range(8)]

        def ask(q: str) -> list[int]:
            _, _, tokens, _ = client.predict(q, [], 8, 3, False, "probability", "cividis", 0.5, api_name="/chat")
            return [t["id"] for t in tokens["tokens"]]

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(ask, questions))
        want = [[t.id for t in service.chat([Message("user", q)], Settings(max_new_tokens=8)).tokens]
                for q in questions]
        assert got == want
        served = get_json(f"{proxy_url}/nodes/status")
        assert all(served[n.url]["latency"] for n in nodes), served  # both nodes answered requests

        # node 1 dies while a reply streams from it: a clean error, not a hang or a traceback
        doomed = Service(OpenAIEngine.load(nodes[1].url, options=FAST_FAIL))
        with pytest.raises(ModelFailed, match="mid-reply"):
            for event in doomed.stream([Message("user", "Write a long story about a dragon.")],
                                       Settings(max_new_tokens=400)):
                if getattr(event, "delta", "") and nodes[1].proc.poll() is None:
                    stop(nodes[1].proc, signal.SIGKILL)
        # the demo keeps answering through the proxy (retries until the proxy drops the dead node)
        for q in questions[:4]:
            assert ask(q) == want[questions.index(q)]
        deadline = time.time() + 15  # the proxy's health check (every 3 s here) drops the dead node
        while nodes[1].url in get_json(f"{proxy_url}/nodes/status"):
            assert time.time() < deadline, "the proxy kept the dead node"
            time.sleep(0.5)
        assert ask(questions[0]) == want[0]
    finally:
        if app is not None:
            stop(app)
        stop(proxy)
