"""Step mode: a reply built one token at a time by the visitor, on the model's exact numbers.

A client of the Service. Each step is one teacher-forced pass over prompt + path: the path's rows
score it like any reply (forced tokens included, so a typed text is scored as the token sequence it
is), and the row after it is the next-token distribution, looked at through a sampler. Finishing
hands the path to the Service as a forced prefix, so greedy decoding takes over from there.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch

from .engines.base import Engine
from .errors import BadInput, Unsupported
from .requests import Rerun, Step
from .sampler import next_token, p_greedy_from_top, p_greedy_rows
from .scoring import StepScores, score_chunks
from .service import Event, Service, check_fit, check_vocab, prompt_ids_of, text_ids_of
from .types import Sampler, ScoredReply, Stepped, Timings


def path_of(service: Service, request: Step) -> tuple[list[int], list[int], tuple[int, ...]]:
    """(prompt ids, path ids, chosen positions) of a step, checked against the model."""
    engine = service.engine
    if engine.info.server_template:
        raise Unsupported("step mode needs the model in this process (--backend transformers or lmdeploy): a "
                          "server sends only its top logprobs, never a whole next-token distribution")
    prompt = prompt_ids_of(engine, request.messages)
    path = check_vocab(engine, request.prefix, "prefix")
    chosen = list(request.chosen)
    if request.force_id is not None:
        chosen.append(len(path))
        path += check_vocab(engine, (request.force_id,), "step", unknown=True)
    elif request.force_text:
        typed = text_ids_of(engine, request.force_text)[1]
        if not typed:
            raise BadInput("that text has no tokens: type a word or a sign")
        chosen += range(len(path), len(path) + len(typed))
        path += typed
    if path and path[-1] in engine.info.stop_ids and request.finish:
        raise BadInput("the path has ended (its last token is an end of turn): nothing follows it")
    check_fit(engine, len(prompt) + len(path) + 1, 0, "prompt + path")
    return prompt, path, tuple(chosen)


def step(service: Service, request: Step) -> Stepped:
    """The path with the request's forced token or text appended, scored, and the next-token view."""
    t0 = time.perf_counter()
    prompt, path, chosen = path_of(service, request)
    ended = bool(path) and path[-1] in service.info.stop_ids
    steps, row = service.turns.model(_rows, service.engine, [*prompt, *path], len(prompt) - 1, path,
                                     request.settings.top_k)
    reply = service.turns.reply(prompt, path, steps, None, request.settings, "stop" if ended else "step", (),
                                Timings(0.0, time.perf_counter() - t0))
    stepped = Stepped(replace(reply, chosen=chosen), None, None if ended else row)
    return stepped if ended else relook(service, stepped, request.sampler)


def relook(service: Service, stepped: Stepped, sampler: Sampler) -> Stepped:
    """The same step through another sampler, from its kept row: no model call."""
    return replace(stepped, next=next_token(stepped.logits, sampler, service.tokenizer.display))


def _rows(engine: Engine, ids: list[int], start: int, path: Sequence[int], top_k: int
          ) -> tuple[StepScores, torch.Tensor]:
    """One pass: the path's scores (every row but the last) and the last row, the next token's logits."""
    last: list[torch.Tensor] = []

    def all_but_the_last() -> Iterator[torch.Tensor]:
        held = None
        for chunk in engine.logits(ids, start):
            if held is not None:
                yield held
            held = chunk
        if len(held) > 1:
            yield held[:-1]
        last.append(held[-1].float().clone())

    steps = score_chunks(all_but_the_last(), torch.tensor(path, dtype=torch.long), top_k)
    return steps, last[0]


def finish(service: Service, request: Step, cancel: threading.Event | None = None) -> Iterator[Event]:
    """Greedy from the end of the path: the Service's stream, its reply marked with the visitor's picks."""
    prompt, path, chosen = path_of(service, replace(request, finish=True))
    stream = service.run(Rerun(tuple(prompt), request.settings, tuple(path)), cancel)

    def marked() -> Iterator[Event]:
        for event in stream:
            yield replace(event, chosen=chosen) if isinstance(event, ScoredReply) else event

    return marked()


def p_greedy_along(service: Service, prompt: Sequence[int], reply: ScoredReply, sampler: Sampler
                   ) -> tuple[list[float], bool]:
    """p(the sampler picks the greedy token) at every position of a reply (each given the reply's own
    prefix) -> (the values, whether the kept top-k alone gave them). Where the kept alternatives cannot
    represent the sampler's cut, the whole rows are recomputed in one pass."""
    kept = [p_greedy_from_top([math.log(a.prob) for a in t.top if a.prob > 0], sampler) for t in reply.tokens]
    if all(p is not None for p in kept):
        return [float(p) for p in kept], True
    ids = [*prompt, *(t.id for t in reply.tokens)]
    return service.turns.model(_p_greedy_rows, service.engine, ids[:-1], len(prompt) - 1, sampler), False


def _p_greedy_rows(engine: Engine, ids: list[int], start: int, sampler: Sampler) -> list[float]:
    return [float(p) for chunk in engine.logits(ids, start) for p in p_greedy_rows(chunk, sampler)]
