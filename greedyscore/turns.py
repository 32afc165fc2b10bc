"""How one checked request becomes a ScoredReply: generate through the scheduler while streaming
text, then score exactly the ids the engine produced (single pass when it handed over logits, a
teacher-forced rescoring otherwise), verify, and build the tokens. No validation here: the Service
checks requests before anything reaches this module.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch

from .calibration import calibration
from .detokenize import Detokenizer, token_texts
from .engines.base import Engine, GenerateRequest, Generation
from .errors import GreedyScoreError, ModelFailed, OutOfMemory, Unsupported
from .scheduler import Scheduler
from .scoring import StepScores, build_tokens, compare_engine_logprobs, empty_scores
from .stats import reply_stats
from .types import Message, ScoredReply, Settings, TextDelta, Timings

T = TypeVar("T")


@contextmanager
def model_errors() -> Iterator[None]:
    """Whatever an engine raises becomes a domain error with a message a user can act on."""
    try:
        yield
    except GreedyScoreError:
        raise
    except (MemoryError, torch.OutOfMemoryError) as ex:
        raise OutOfMemory(
            "the model ran out of memory on this request: try a shorter prompt or fewer new tokens"
        ) from ex
    except Exception as ex:  # noqa: BLE001 - the engine's own failure, reported to this request only
        first = (str(ex).strip().splitlines() or [""])[0][:200]
        raise ModelFailed(f"the model failed on this request ({type(ex).__name__}: {first}); please try again") from ex


@dataclass(frozen=True)
class Turn:
    """One generation to run: after prompt + forced (a fork's prefix, scored teacher-forced first),
    or after `messages` on an engine whose server templates them."""

    prompt: tuple[int, ...]
    settings: Settings
    forced: tuple[int, ...] = ()
    forked_at: int | None = None
    messages: tuple[Message, ...] = ()


class Turns:
    """The engine and its scheduler, as one request's model work sees them."""

    def __init__(self, engine: Engine, scheduler: Scheduler) -> None:
        self.engine = engine
        self.scheduler = scheduler

    def model(self, fn: Callable[..., T], *args: Any, follow_up: bool = False, **kwargs: Any) -> T:
        """Model work other than generation, where the scheduler puts it; engine failures made domain
        errors. follow_up: work for a request already accepted (its reply exists), never refused."""
        with model_errors():
            if follow_up:
                return self.scheduler.follow_up(fn, *args, **kwargs)
            return self.scheduler.call(fn, *args, **kwargs)

    def stream(self, turn: Turn, cancel: threading.Event, heartbeat_s: float) -> Iterator[TextDelta | ScoredReply]:
        """TextDeltas while it generates (a heartbeat every `heartbeat_s` when nothing comes), then the
        ScoredReply. Closed early or failed: the engine's row is freed through `cancel`."""
        events: queue.SimpleQueue[list[int] | Future] = queue.SimpleQueue()  # new ids, then the done Future
        detok = Detokenizer(self.engine.tokenizer.decode, self.engine.tokenizer.is_special)
        t0 = time.perf_counter()
        done = False
        try:
            forced_steps = self.model(self.engine.score_ids, list(turn.prompt), list(turn.forced),
                                      turn.settings.top_k) if turn.forced else None
            for tok in turn.forced:
                detok.push(tok)
            if detok.text:
                yield TextDelta(detok.text, detok.text)
            future = self._submit(turn, events.put, cancel)
            future.add_done_callback(events.put)
            while not isinstance(item := self._next(events, heartbeat_s), Future):
                before = detok.text
                for tok in item or ():
                    detok.push(tok)
                if item is None or detok.text != before:
                    yield TextDelta(detok.text[len(before):], detok.text)
            with model_errors():
                gen = future.result()
            reply = self._scored(turn, gen, time.perf_counter() - t0, forced_steps)
            done = True
            yield reply
        finally:
            if not done:
                cancel.set()

    @staticmethod
    def _next(events: queue.SimpleQueue, heartbeat_s: float) -> list[int] | Future | None:
        try:
            return events.get(timeout=heartbeat_s)
        except queue.Empty:
            return None  # a heartbeat

    def _submit(self, turn: Turn, on_ids: Callable[[list[int]], None], cancel: threading.Event) -> Future:
        if turn.forced and turn.forced[-1] in self.engine.info.stop_ids:  # forked onto an end of turn: nothing follows
            future: Future = Future()
            future.set_result(Generation((), "stop"))
            return future
        s = turn.settings
        return self.scheduler.submit(GenerateRequest((*turn.prompt, *turn.forced), s.max_new_tokens, s.top_k,
                                                     on_ids, cancel, turn.messages))

    def _scored(self, turn: Turn, gen: Generation, generate_s: float, forced_steps: StepScores | None
                ) -> ScoredReply:
        """Scores of the ids the engine generated, plus verification and the engine's own check; a
        fork's forced prefix (already scored) comes first."""
        t0 = time.perf_counter()
        settings = turn.settings
        prompt = list(gen.prompt_ids) if gen.prompt_ids is not None else list(turn.prompt)
        new = list(gen.token_ids)
        ids = [*turn.forced, *new]
        steps = gen.steps
        if not new:
            steps = empty_scores(settings.top_k)
        elif steps is None:  # the engine gave no usable logits: rescore exactly its ids
            steps = self.model(self.engine.score_ids, [*prompt, *turn.forced], new, settings.top_k, follow_up=True)
        notes = gen.notes
        if gen.engine_logprobs is not None:
            tol = max(settings.tolerance, self.engine.info.logprob_tolerance)  # the engine's dtype
            notes += tuple(compare_engine_logprobs(gen.engine_logprobs, new, steps, tol))
        if forced_steps is not None:
            steps = StepScores.cat([forced_steps, steps])
        rescored, why = self._verified(prompt, ids, steps, gen, settings)
        return self.reply(prompt, ids, steps, rescored, settings, gen.finish_reason, notes + why,
                          Timings(generate_s, time.perf_counter() - t0), turn.forked_at)

    def _verified(self, prompt: list[int], ids: list[int], steps: StepScores, gen: Generation, settings: Settings
                  ) -> tuple[StepScores | None, tuple[str, ...]]:
        """The reply rescored teacher-forced (verify), or why it could not be; a stopped reply is not."""
        if not (settings.verify and gen.finish_reason != "abort" and ids):
            return None, ()
        if gen.steps is None:  # every score already comes from a teacher-forced rescoring
            return steps, ()
        if not prompt:
            return None, ("verification unavailable: the server did not say which prompt ids it used",)
        try:
            return self.model(self.engine.score_ids, prompt, ids, settings.top_k, cache=gen.cache,
                              follow_up=True), ()
        except Unsupported as ex:  # the reply stands; only its check is missing
            return None, (f"verification unavailable: {ex}",)

    def teacher_forced(self, context: Sequence[int], target: Sequence[int], settings: Settings) -> ScoredReply:
        """Scores of given ids after a context, with the reply's calibration."""
        t0 = time.perf_counter()
        steps = self.model(self.engine.score_ids, list(context), list(target), settings.top_k)
        reply = self.reply(context, target, steps, None, settings, "stop", (), Timings(0.0, time.perf_counter() - t0))
        return replace(reply, calibration=calibration(reply.tokens))

    def reply(self, prompt: Sequence[int], ids: Sequence[int], steps: StepScores, rescored: StepScores | None,
              settings: Settings, finish_reason: str, notes: tuple[str, ...], timings: Timings,
              forked_at: int | None = None) -> ScoredReply:
        """Tensors -> ScoredTokens (texts byte-faithful), stats; the time spent here counts as scoring."""
        t0 = time.perf_counter()
        engine, tok = self.engine, self.engine.tokenizer
        texts = token_texts(ids, tok.decode, tok.is_special)
        tokens = build_tokens(ids, steps, texts, tok.is_special, tok.display, rescored, settings.tolerance)
        return ScoredReply(
            model=engine.info.name,
            backend=engine.info.backend,
            text="".join(t.text for t in tokens if not t.special),
            prompt_token_ids=tuple(prompt),
            tokens=tuple(tokens),
            stats=reply_stats([t.logprob for t in tokens]),
            timings=Timings(generate_s=round(timings.generate_s, 4),
                            score_s=round(timings.score_s + time.perf_counter() - t0, 4)),
            finish_reason=finish_reason,
            verified=rescored is not None,
            notes=notes,
            score_source=engine.info.scores_from(),
            forked_at=forked_at,
        )
