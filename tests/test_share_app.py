"""Share links through the launched app (real HTTP, gradio_client), on SQLite and on a real
PostgreSQL server: two app processes on one store as behind a load balancer, 16 clients sharing
and opening at once, and every link still identical after both processes are gone."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from gradio_client import Client
from servers import free_port, start, stop

HOSTILE = '<script>alert("x")</script> & "q" \u4f60\u597d \U0001f600'


def launch(store: str, *flags: str):
    port = free_port()
    proc = start([sys.executable, "app.py", "--port", str(port), "--store", store, "--max-new-tokens", "16", *flags],
                 f"http://127.0.0.1:{port}/", f"share-app-{port}", env={"GRADIO_ANALYTICS_ENABLED": "False"})
    return proc, f"http://127.0.0.1:{port}/"


def numbers(tokens: list[dict]) -> list[tuple]:
    return [(t["id"], t["text"], t["prob"], t["logprob"], t["rank"], t["entropy"], t["margin"],
             [(a["id"], a["text"], a["prob"]) for a in t["top"]]) for t in tokens]


def test_share_on_two_processes_then_open_after_a_restart(store_at):
    a, url_a = launch(store_at)
    b, url_b = launch(store_at)
    try:
        ca, cb = Client(url_a, verbose=False), Client(url_b, verbose=False)
        _, _, chat, _ = ca.predict(HOSTILE, [], 10, 3, True, "prob", "viridis", 0.5, api_name="/chat")
        _, _, text, _ = ca.predict("The quick brown fox.", "", 4, "prob", "viridis", 0.5, api_name="/score_text")
        first = ca.predict(chat, api_name="/share")
        assert first["url"] == f"{url_a}?r={first['id']}"
        _, _, doc, _ = cb.predict(first["id"], "prob", "viridis", 0.5, api_name="/shared")  # the other process
        assert numbers(doc["conversation"]["turns"][0]["tokens"]) == numbers(chat["tokens"])

        def share_and_open(i: int) -> tuple[str, dict]:
            mine, other = (Client(url_a, verbose=False), Client(url_b, verbose=False))[:: 1 if i % 2 else -1]
            item = chat if i % 3 else text
            made = mine.predict(item, api_name="/share")
            return made["id"], other.predict(made["id"], "prob", "viridis", 0.5, api_name="/shared")[2]

        with ThreadPoolExecutor(16) as pool:  # 16 clients at once, each sharing and opening
            results = list(pool.map(share_and_open, range(16), timeout=300))
    finally:
        stop(a)
        stop(b)
    assert len({i for i, _ in results}) == 16
    for i, (_, doc) in enumerate(results):
        kind = "chat" if i % 3 else "text"
        assert doc["kind"] == kind
        got = doc["conversation"]["turns"][0]["tokens"] if kind == "chat" else doc["reply"]["tokens"]
        assert numbers(got) == numbers((chat if kind == "chat" else text)["tokens"])
    c, url_c = launch(store_at)  # both processes gone: a new one on the same store
    try:
        client = Client(url_c, verbose=False)
        page, _, doc, stats = client.predict(first["id"], "prob", "viridis", 0.5, api_name="/shared")
        assert numbers(doc["conversation"]["turns"][0]["tokens"]) == numbers(chat["tokens"])
        assert doc["messages"] == [{"role": "user", "content": HOSTILE}] and doc["settings"]["max_new_tokens"] == 10
        assert doc["model"]["weights"] is None and "<script>" not in page  # sent by a client: not vouched for
        assert "perplexity" in stats.lower()
        for item_id, before in results:
            assert client.predict(item_id, "prob", "viridis", 0.5, api_name="/shared")[2] == before
        with pytest.raises(Exception, match="nothing is shared under that link"):
            client.predict("A" * 22, "prob", "viridis", 0.5, api_name="/shared")
        with pytest.raises(Exception, match="not valid"):
            client.predict("../../etc/passwd", "prob", "viridis", 0.5, api_name="/shared")
        with pytest.raises(Exception, match="not a greedyscore reply JSON"):
            client.predict({"tokens": [{"id": 1}]}, api_name="/share")
    finally:
        stop(c)


def tiny_result() -> dict:
    """A tokens JSON as /score_text returns it (one token at 50%): sharing it needs no model."""
    import math

    token = {"id": 1, "text": "a", "special": False, "prob": 0.5, "logprob": math.log(0.5), "rank": 1,
             "entropy": 0.7, "margin": 0.0, "top": []}
    return {"tokens": [token], "prompt_token_ids": [1], "model": "m", "backend": "b", "text": "a", "stats": {},
            "kind": "text", "messages": []}


def shares_as(url: str, forwarded_for: str) -> str:
    """Share once from a client that claims to be `forwarded_for` -> "ok" or the refusal."""
    client = Client(url, verbose=False, headers={"X-Forwarded-For": forwarded_for})
    try:
        client.predict(tiny_result(), api_name="/share")
        return "ok"
    except Exception as ex:  # noqa: BLE001 - the refusal's message
        return str(ex)


def test_the_share_rate_limit_trusts_x_forwarded_for_only_from_named_proxies(tmp_path):
    """By default the connecting address counts (here loopback for every client): X-Forwarded-For
    claims are ignored, so a second claimed address does not get a fresh allowance. With
    --trusted-proxies naming loopback (a local reverse proxy), each forwarded client counts alone."""
    plain, url = launch(str(tmp_path / "a.db"), "--share-rate", "2")
    try:
        assert [shares_as(url, "10.0.0.1") for _ in range(2)] == ["ok", "ok"]
        assert "you have shared 2 results recently" in shares_as(url, "10.0.0.2")  # a claim, ignored
    finally:
        stop(plain)
    proxied, url = launch(str(tmp_path / "b.db"), "--share-rate", "2", "--trusted-proxies", "127.0.0.1")
    try:
        assert [shares_as(url, "10.0.0.1") for _ in range(2)] == ["ok", "ok"]
        assert "you have shared 2 results recently" in shares_as(url, "10.0.0.1")
        assert shares_as(url, "10.0.0.2") == "ok"  # another client behind the proxy
    finally:
        stop(proxied)
