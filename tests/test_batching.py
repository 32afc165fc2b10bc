"""Batched greedy generation and the shared-engine worker: correctness, isolation, faults, bounds."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from greedyscore.batching import Batcher
from greedyscore.engines.base import GenerateRequest
from greedyscore.errors import Busy
from greedyscore.service import Service
from greedyscore.types import Message, Settings

PROMPTS = [
    "What is the capital of France?",
    "你好",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Say OK.",
]


def test_batched_rows_score_the_sequence_they_generated(engine):
    prompts = [engine.prompt_ids([Message("user", p)]) for p in PROMPTS]
    limits = [12, 5, 16, 9, 3]
    gens = engine.generate_batch([GenerateRequest(p, n, 4) for p, n in zip(prompts, limits)])
    for prompt, limit, gen in zip(prompts, limits, gens):
        assert 0 < len(gen.token_ids) <= limit
        assert gen.token_ids[-1] in engine.stop_ids or len(gen.token_ids) == limit
        assert not any(t in engine.stop_ids for t in gen.token_ids[:-1])
        assert gen.steps.top_ids.shape == (len(gen.token_ids), 4)
        solo = engine.score_ids(prompt, gen.token_ids, 4)  # teacher-forced, unpadded, alone
        diff = (solo.logprob.exp() - gen.steps.logprob.exp()).abs().max()
        assert float(diff) < 1e-4


def test_batched_streams_each_row_its_own_ids(engine):
    prompts = [engine.prompt_ids([Message("user", p)]) for p in PROMPTS[:3]]
    seen: list[list[int]] = [[], [], []]
    reqs = [GenerateRequest(p, 10, 2, on_ids=seen[i].extend) for i, p in enumerate(prompts)]
    gens = engine.generate_batch(reqs)
    assert [g.token_ids for g in gens] == seen


def test_concurrent_chats_are_batched_and_isolated(engine):
    service = Service(engine, max_batch=8)
    msgs = [[Message("user", p)] for p in PROMPTS]
    with ThreadPoolExecutor(len(msgs)) as pool:
        replies = list(pool.map(lambda m: service.chat(m, Settings(max_new_tokens=10, top_k=3)), msgs))
    assert max(service.batcher.batch_sizes) > 1
    for m, reply in zip(msgs, replies):
        assert list(reply.prompt_token_ids) == engine.prompt_ids(m)  # each got its own prompt back
        ids = [t.id for t in reply.tokens]
        solo = engine.score_ids(list(reply.prompt_token_ids), ids, 3)
        assert float((solo.logprob.exp() - torch.tensor([t.prob for t in reply.tokens])).abs().max()) < 1e-4


class FlakyEngine:
    """The real engine, with a failure injected into any batch holding a poisoned prompt."""

    def __init__(self, engine, poison: list[int]):
        self.engine, self.poison = engine, poison

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate_batch(self, requests):
        if any(list(r.prompt_ids) == self.poison for r in requests):
            raise RuntimeError("injected failure")
        return self.engine.generate_batch(requests)


def test_fault_in_one_request_leaves_others_and_next_working(engine):
    bad = [Message("user", "poison")]
    flaky = FlakyEngine(engine, engine.prompt_ids(bad))
    service = Service(flaky, max_batch=8)
    jobs = [bad] + [[Message("user", p)] for p in PROMPTS[:3]]

    def run(m):
        try:
            return service.chat(m, Settings(max_new_tokens=6))
        except RuntimeError as ex:
            return ex

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(run, jobs))
    assert isinstance(results[0], RuntimeError)
    assert all(r.tokens for r in results[1:])
    assert service.chat([Message("user", "Hi")], Settings(max_new_tokens=4)).tokens  # still serving


def test_bounded_queue_says_busy():
    gate = threading.Event()

    class Slow:
        def generate_batch(self, requests):
            gate.wait(10)
            return []

    batcher = Batcher(Slow(), max_batch=1, max_pending=1, window_s=0)
    t = threading.Thread(target=lambda: batcher.call(gate.wait, 10), daemon=True)
    t.start()
    time.sleep(0.2)  # the worker now holds the first job; the queue has room for one
    threading.Thread(target=lambda: batcher.call(lambda: None), daemon=True).start()
    time.sleep(0.2)
    with pytest.raises(Busy, match="busy"):
        batcher.call(lambda: None)
    gate.set()
    t.join(5)
    assert batcher.call(lambda: 42) == 42


def test_stop_cancels_a_running_generation(engine):
    service = Service(engine)
    cancel = threading.Event()
    seen = []

    def on_text(text):
        seen.append(text)
        if len(seen) == 3:
            cancel.set()

    reply = service.chat([Message("user", "Tell me a long story about a dragon.")],
                         Settings(max_new_tokens=200), on_text=on_text, cancel=cancel)
    assert reply.finish_reason == "abort"
    assert len(reply.tokens) < 10


def test_batched_verification_reuses_each_rows_prompt_cache(engine):
    """Verification of a batched reply cuts its row out of the batch KV cache; it must equal a
    fresh teacher-forced rescoring."""
    prompts = [engine.prompt_ids([Message("user", p)]) for p in PROMPTS[:3]]
    gens = engine.generate_batch([GenerateRequest(p, 8, 3) for p in prompts])
    assert all(g.cache is not None for g in gens)
    for prompt, gen in zip(prompts, gens):
        cached = engine.score_ids(prompt, gen.token_ids, 3, cache=gen.cache)
        fresh = engine.score_ids(prompt, gen.token_ids, 3)
        assert float((cached.logprob.exp() - fresh.logprob.exp()).abs().max()) < 1e-4
        assert cached.top_ids[:, 0].tolist() == fresh.top_ids[:, 0].tolist()
