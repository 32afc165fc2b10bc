"""Continuous batching on the real model: rows join a running batch at the next step and leave it
the step they finish, each row's tokens and scores those of the same request run alone."""

from __future__ import annotations

import threading
import time

import torch

from greedyscore.engines.base import GenerateRequest
from greedyscore.service import Service
from greedyscore.types import Message, Settings

PROMPTS = ["Tell me a long story about a dragon.", "你好",
           "Explain in detail, step by step, how a bicycle gear system works and why it helps uphill."]


def solo(engine, prompt: list[int], n: int):
    return engine.generate_batch([GenerateRequest(tuple(prompt), n, 4)])[0]


def test_rows_join_mid_batch_and_leave_when_done_each_as_if_alone(engine):
    ids = [engine.tokenizer.prompt_ids([Message("user", p)]) for p in PROMPTS]
    batch = engine.decoder()
    batch.join(GenerateRequest(tuple(ids[0]), 12, 4), tag="a")  # a mid-length prompt decodes alone
    finished = {}
    for _ in range(4):
        finished.update(batch.step())
    batch.join(GenerateRequest(tuple(ids[1]), 3, 4), tag="short")  # shorter prompt: padded on the left
    batch.join(GenerateRequest(tuple(ids[2]), 6, 4), tag="long")  # longer than the batch: the others padded
    assert len(batch) == 3
    widths = []
    while len(batch):
        finished.update(batch.step())
        widths.append((len(batch), batch.width))
    assert [n for n, _ in widths[:4]] == [3, 3, 2, 2]  # "short" left after its 3rd token, at once
    for tag, prompt, n in (("a", ids[0], 12), ("short", ids[1], 3), ("long", ids[2], 6)):
        alone = solo(engine, prompt, n)
        assert finished[tag].token_ids == alone.token_ids, tag
        assert torch.allclose(finished[tag].steps.logprob, alone.steps.logprob, atol=1e-4), tag
        assert torch.equal(finished[tag].steps.top_ids, alone.steps.top_ids), tag


def test_a_request_arriving_mid_batch_finishes_before_the_long_one(engine):
    """With a fixed batch the short request would wait for the long one to end."""
    service = Service(engine, max_batch=8)
    long_msgs, short_msgs = [Message("user", PROMPTS[0])], [Message("user", "Say hi.")]
    started, times = threading.Event(), {}

    def run_long():
        for event in service.stream(long_msgs, Settings(max_new_tokens=80)):
            if getattr(event, "delta", ""):
                started.set()
        times["long"] = time.perf_counter()

    t = threading.Thread(target=run_long)
    t.start()
    assert started.wait(60)
    short = service.chat(short_msgs, Settings(max_new_tokens=4))
    times["short"] = time.perf_counter()
    t.join(120)
    assert times["short"] < times["long"]
    assert len(short.tokens) <= 4 and service.runner.batch_sizes[-1] == 2  # it joined the running row
    alone = service.chat(short_msgs, Settings(max_new_tokens=4))
    assert [t.id for t in short.tokens] == [t.id for t in alone.tokens]
