"""Batched greedy generation on the real model: every row scores the sequence it generated, a
stopped row ends at its last real token, and the service batches concurrent chats.

(Scheduling logic without a model, and without timing luck, is in test_service.py.)"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from greedyscore.engines.base import GenerateRequest
from greedyscore.errors import ModelFailed
from greedyscore.service import Service
from greedyscore.types import Message, ScoredReply, Settings, TextDelta

PROMPTS = [
    "What is the capital of France?",
    "你好",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Say OK.",
]


def test_batched_rows_score_the_sequence_they_generated(engine):
    prompts = [engine.tokenizer.prompt_ids([Message("user", p)]) for p in PROMPTS]
    limits = [12, 5, 16, 9, 3]
    gens = engine.generate_batch([GenerateRequest(p, n, 4) for p, n in zip(prompts, limits)])
    for prompt, limit, gen in zip(prompts, limits, gens):
        assert 0 < len(gen.token_ids) <= limit
        assert gen.token_ids[-1] in engine.info.stop_ids or len(gen.token_ids) == limit
        assert not any(t in engine.info.stop_ids for t in gen.token_ids[:-1])
        assert gen.steps.top_ids.shape == (len(gen.token_ids), 4)
        solo = engine.score_ids(prompt, gen.token_ids, 4)  # teacher-forced, unpadded, alone
        diff = (solo.logprob.exp() - gen.steps.logprob.exp()).abs().max()
        assert float(diff) < 1e-4


def test_batched_streams_each_row_its_own_ids(engine):
    prompts = [engine.tokenizer.prompt_ids([Message("user", p)]) for p in PROMPTS[:3]]
    seen: list[list[int]] = [[], [], []]
    reqs = [GenerateRequest(p, 10, 2, on_ids=seen[i].extend) for i, p in enumerate(prompts)]
    gens = engine.generate_batch(reqs)
    assert [list(g.token_ids) for g in gens] == seen


def test_concurrent_chats_are_batched_and_isolated(engine):
    service = Service(engine, max_batch=8)
    msgs = [[Message("user", p)] for p in PROMPTS]
    with ThreadPoolExecutor(len(msgs)) as pool:
        replies = list(pool.map(lambda m: service.chat(m, Settings(max_new_tokens=10, top_k=3)), msgs))
    assert max(service.runner.batch_sizes) > 1
    for m, reply in zip(msgs, replies):
        assert list(reply.prompt_token_ids) == engine.tokenizer.prompt_ids(m)  # each got its own prompt back
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

    def decoder(self, max_rows: int = 16):
        """The continuous batch, failing when the poisoned prompt joins (its prefill)."""
        batch, poison = self.engine.decoder(max_rows), self.poison
        join = batch.join

        def poisoned_join(request, tag=None):
            if list(request.prompt_ids) == poison:
                raise RuntimeError("injected failure")
            join(request, tag)

        batch.join = poisoned_join
        return batch


def test_fault_in_one_request_leaves_others_and_next_working(engine):
    bad = [Message("user", "poison")]
    flaky = FlakyEngine(engine, engine.tokenizer.prompt_ids(bad))
    service = Service(flaky, max_batch=8)
    jobs = [bad] + [[Message("user", p)] for p in PROMPTS[:3]]

    def run(m):
        try:
            return service.chat(m, Settings(max_new_tokens=6))
        except ModelFailed as ex:
            return ex

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(run, jobs))
    assert isinstance(results[0], ModelFailed) and "injected failure" in str(results[0])
    assert all(r.tokens for r in results[1:])
    assert service.chat([Message("user", "Hi")], Settings(max_new_tokens=4)).tokens  # still serving


def test_stop_cancels_a_running_generation(engine):
    service = Service(engine)
    cancel = threading.Event()
    settings = Settings(max_new_tokens=200)
    messages = [Message("user", "Tell me a long story about a dragon.")]
    deltas = 0
    for event in service.stream(messages, settings, cancel=cancel):
        if isinstance(event, TextDelta) and event.delta:
            deltas += 1
            if deltas == 3:
                cancel.set()
        elif isinstance(event, ScoredReply):
            reply = event
    assert reply.finish_reason == "abort" and 3 <= len(reply.tokens) < 10
    full = service.chat(messages, Settings(max_new_tokens=len(reply.tokens)))
    assert [t.id for t in reply.tokens] == [t.id for t in full.tokens]  # the tokens it had really chosen


def _two_rows(engine, limits, on_ids=(None, None), cancels=(None, None)):
    prompts = [engine.tokenizer.prompt_ids([Message("user", p)]) for p in ("Tell me a long story about a dragon.",
                                                                  "Write a haiku about the sea.")]
    return engine.generate_batch([GenerateRequest(tuple(p), n, 3, f, c)
                                  for p, n, f, c in zip(prompts, limits, on_ids, cancels)])


def test_a_stopped_row_of_a_batch_ends_at_its_last_real_token(engine):
    """Stop on one row of two: the row is not padded with the pad id (for SmolLM2 <|im_end|>, an
    end of turn the model never chose), and the other row is untouched."""
    reference = _two_rows(engine, (40, 40))
    assert len(reference[0].token_ids) > 8 and engine.pad_id in engine.info.stop_ids
    cancel = threading.Event()
    seen: list[int] = []

    def on_ids(new: list[int]) -> None:
        seen.extend(new)
        if len(seen) == 3:
            cancel.set()  # seen before the row's next step: it leaves the batch there

    stopped, other = _two_rows(engine, (40, 40), on_ids=(on_ids, None), cancels=(cancel, None))
    assert stopped.finish_reason == "abort"
    n = len(seen)
    assert n == 3 and list(stopped.token_ids) == seen == list(reference[0].token_ids[:n])  # what was streamed
    assert not any(t in engine.info.stop_ids for t in stopped.token_ids)
    assert len(stopped.steps) == n and torch.allclose(stopped.steps.logprob, reference[0].steps.logprob[:n])
    assert other.token_ids == reference[1].token_ids and other.finish_reason == reference[1].finish_reason


def test_abort_only_when_really_cut_short(engine):
    """A row that reached its limit before its cancel was seen finished by "length", not "abort"."""
    cancel = threading.Event()
    seen: list[int] = []

    def on_ids(new: list[int]) -> None:
        seen.extend(new)
        if len(seen) == 3:
            cancel.set()  # its last token: the row is already done

    done, other = _two_rows(engine, (3, 12), on_ids=(on_ids, None), cancels=(cancel, None))
    assert cancel.is_set() and len(done.token_ids) == 3 and done.finish_reason == "length"
    assert len(other.token_ids) > 3


def test_batched_verification_reuses_each_rows_prompt_cache(engine):
    """Verification of a batched reply cuts its row out of the batch KV cache; it must equal a
    fresh teacher-forced rescoring."""
    prompts = [engine.tokenizer.prompt_ids([Message("user", p)]) for p in PROMPTS[:3]]
    gens = engine.generate_batch([GenerateRequest(p, 8, 3) for p in prompts])
    assert all(g.cache is not None for g in gens)
    for prompt, gen in zip(prompts, gens):
        cached = engine.score_ids(prompt, gen.token_ids, 3, cache=gen.cache)
        fresh = engine.score_ids(prompt, gen.token_ids, 3)
        assert float((cached.logprob.exp() - fresh.logprob.exp()).abs().max()) < 1e-4
        assert cached.top_ids[:, 0].tolist() == fresh.top_ids[:, 0].tolist()
