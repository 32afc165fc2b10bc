"""The one shared engine behind the CLI and the web demo: validation, batching, scoring.

`Service.chat` is the whole pipeline of one turn; the UI and the CLI only call it and render
the ScoredReply it returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from .batching import Batcher
from .engines.base import Engine, GenerateRequest, Generation
from .errors import BadInput, Busy, InputTooLong
from .scoring import StepScores, build_tokens, empty_scores, reply_stats, token_texts
from .types import MAX_TOP_K, ROLES, Message, ScoredReply, Settings, Timings

T = TypeVar("T")
OnText = Callable[[str], None]  # called with the reply text so far while it streams
CHARS_PER_TOKEN_CAP = 16  # a message longer than context x this cannot fit: refuse before tokenizing


def parse_messages(raw: object) -> list[Message]:
    """OpenAI-style [{"role", "content"}] -> Messages, with a clear error for anything else.

    Example: parse_messages([{"role": "user", "content": "hi"}]) -> [Message("user", "hi")]
    """
    if not isinstance(raw, list) or not raw:
        raise BadInput("messages must be a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadInput(f"message {i} must be an object with string \"role\" and \"content\"")
        out.append(Message(m["role"], m["content"]))
    return out



def check_settings(settings: Settings, context_length: int | None = None) -> None:
    """Settings in range (the context check only once a model is known)."""
    if not isinstance(settings.max_new_tokens, int) or settings.max_new_tokens <= 0:
        raise BadInput(f"max_new_tokens must be a positive integer, got {settings.max_new_tokens!r}")
    if context_length is not None and settings.max_new_tokens >= context_length:
        raise BadInput(
            f"max_new_tokens {settings.max_new_tokens:,} is beyond the model's context of {context_length:,} tokens"
        )
    if not isinstance(settings.top_k, int) or not 1 <= settings.top_k <= MAX_TOP_K:
        raise BadInput(f"top_k must be between 1 and {MAX_TOP_K}, got {settings.top_k!r}")
    if not 0 <= settings.tolerance < 1:
        raise BadInput(f"tolerance must be in [0, 1), got {settings.tolerance!r}")


def check_roles(messages: Sequence[Message]) -> None:
    for m in messages:
        if m.role not in ROLES:
            raise BadInput(f"unknown role {m.role!r}: use one of {', '.join(ROLES)}")


def check_messages(messages: Sequence[Message]) -> None:
    """A conversation that can get a reply: known roles, ending in a non-empty user turn."""
    if not messages:
        raise BadInput("empty prompt: write a message first")
    check_roles(messages)
    if not messages[-1].content.strip():
        raise BadInput("empty prompt: write a message first")
    if messages[-1].role == "assistant":
        raise BadInput("the last message is the assistant's: end with a user message to get a reply")


class Service:
    """Owns the one engine shared by every visitor and API client.

    A batching engine (transformers) is driven by a Batcher: one worker thread, requests that
    arrive together generate as one batch. A concurrent engine (LMDeploy's async pipeline
    batches by itself) is called directly from each request's thread. Both are bounded:
    beyond `max_pending` waiting requests, `Busy`.
    """

    def __init__(self, engine: Engine, max_batch: int = 16, max_pending: int = 64) -> None:
        self.engine = engine
        self.batcher = Batcher(engine, max_batch, max_pending) if hasattr(engine, "generate_batch") else None
        self._slots = threading.BoundedSemaphore(max_pending)

    def _model(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run model work where it belongs: on the batcher's thread, or here for a concurrent engine."""
        if self.batcher is not None:
            return self.batcher.call(fn, *args, **kwargs)
        if not self._slots.acquire(blocking=False):
            raise Busy("the server is busy: try again in a moment")
        try:
            return fn(*args, **kwargs)
        finally:
            self._slots.release()

    def _generate(self, request: GenerateRequest, messages: Sequence[Message]) -> Generation:
        if self.batcher is not None:
            return self.batcher.generate(request)
        return self._model(
            self.engine.generate, request.prompt_ids, request.max_new_tokens, request.top_k,
            request.on_ids, request.cancel, messages,
        )

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def backend(self) -> str:
        return self.engine.backend

    # --- validation ----------------------------------------------------------------------
    def check_settings(self, settings: Settings) -> None:
        check_settings(settings, self.engine.context_length)

    def check_messages(self, messages: Sequence[Message]) -> None:
        check_messages(messages)
        self._check_chars(sum(len(m.content) for m in messages))

    def _check_chars(self, n_chars: int) -> None:
        ctx = self.engine.context_length
        if n_chars > ctx * CHARS_PER_TOKEN_CAP:
            raise InputTooLong(
                f"the prompt is {n_chars:,} characters, far more than the model's context of {ctx:,} tokens: shorten it"
            )

    def _check_fit(self, n_prompt: int, max_new_tokens: int, what: str = "prompt") -> None:
        ctx = self.engine.context_length
        if n_prompt >= ctx:
            raise InputTooLong(
                f"the {what} is {n_prompt:,} tokens, longer than the model's context of {ctx:,} tokens: shorten it"
            )
        if n_prompt + max_new_tokens > ctx:
            raise InputTooLong(
                f"the {what} is {n_prompt:,} tokens; with max_new_tokens {max_new_tokens:,} that is beyond the "
                f"model's context of {ctx:,} tokens: lower max_new_tokens to {ctx - n_prompt:,} or shorten the {what}"
            )

    # --- requests --------------------------------------------------------------------------
    def chat(
        self,
        messages: Sequence[Message],
        settings: Settings = Settings(),
        on_text: OnText | None = None,
        cancel: threading.Event | None = None,
    ) -> ScoredReply:
        """One greedy turn, scored.

        Steps: validate; template -> prompt ids; greedy generate (single-pass scores when the
        engine hands over logits, else rescoring of exactly the generated ids); optional
        verification rescoring that marks near ties; token texts; stats.
        """
        self.check_settings(settings)
        self.check_messages(messages)
        prompt = self.engine.prompt_ids(messages)
        self._check_fit(len(prompt), settings.max_new_tokens)
        t0 = time.perf_counter()
        request = GenerateRequest(prompt, settings.max_new_tokens, settings.top_k, self._streamer(on_text), cancel)
        gen = self._generate(request, messages)
        t1 = time.perf_counter()
        steps, rescored = self._scores(prompt, gen, settings)
        t2 = time.perf_counter()
        return self._reply(prompt, gen.token_ids, steps, rescored, settings, gen, t1 - t0, t2 - t1)

    def score_text(self, text: str, settings: Settings = Settings(), prompt: str | None = None) -> ScoredReply:
        """Teacher-forced scores of `text`: plain text after BOS, or as the assistant's reply to `prompt`."""
        self.check_settings(settings)
        if not text.strip():
            raise BadInput("empty text: paste some text to score")
        self._check_chars(len(text) + len(prompt or ""))
        engine = self.engine
        if prompt is None:
            context, target = engine.text_ids(text)
            if not context:  # no BOS: the first token has nothing to be predicted from
                context, target = target[:1], target[1:]
        else:
            context = engine.prompt_ids([Message("user", prompt)])
            target = engine.text_ids(text)[1]
        self._check_fit(len(context) + len(target), 0, "text")
        t0 = time.perf_counter()
        steps = self._model(engine.score_ids, context, target, settings.top_k)
        t1 = time.perf_counter()
        gen = Generation(target, "stop")
        return self._reply(context, target, steps, None, settings, gen, 0.0, t1 - t0)

    def score_messages(self, messages: Sequence[Message], settings: Settings = Settings()) -> ScoredReply:
        """Teacher-forced scores of a whole conversation, every templated token after the first."""
        self.check_settings(settings)
        if not messages or not any(m.content.strip() for m in messages):
            raise BadInput("empty conversation: give at least one message with text")
        check_roles(messages)  # any last turn may be scored
        self._check_chars(sum(len(m.content) for m in messages))
        ids = self.engine.prompt_ids(messages)
        self._check_fit(len(ids), 0, "conversation")
        t0 = time.perf_counter()
        steps = self._model(self.engine.score_ids, ids[:1], ids[1:], settings.top_k)
        t1 = time.perf_counter()
        gen = Generation(ids[1:], "stop")
        return self._reply(ids[:1], ids[1:], steps, None, settings, gen, 0.0, t1 - t0)

    # --- helpers ---------------------------------------------------------------------------
    def _streamer(self, on_text: OnText | None) -> Callable[[list[int]], None] | None:
        if on_text is None:
            return None
        ids: list[int] = []
        engine = self.engine

        def on_ids(new: list[int]) -> None:
            ids.extend(t for t in new if not engine.is_special(t))
            on_text(engine.decode(ids))

        return on_ids

    def _scores(self, prompt: list[int], gen: Generation, settings: Settings) -> tuple[StepScores, StepScores | None]:
        """Single-pass scores when present, else rescoring; plus the verification rescoring."""
        steps = gen.steps
        rescored = None
        if not gen.token_ids:
            return steps if steps is not None else empty_scores(settings.top_k), None
        if gen.finish_reason == "abort":  # stopped by the user: skip verification
            settings = replace(settings, verify=False)
        if steps is None:  # the engine gave no usable logits (LMDeploy): rescore exactly its ids
            steps = self._model(self.engine.score_ids, prompt, gen.token_ids, settings.top_k)
            if settings.verify:
                rescored = steps
        elif settings.verify:
            rescored = self._model(self.engine.score_ids, prompt, gen.token_ids, settings.top_k, cache=gen.cache)
        if gen.engine_logprobs is not None:
            from .engines.lmdeploy import compare_engine_logprobs

            gen.notes.extend(compare_engine_logprobs(gen.engine_logprobs, gen.token_ids, steps, settings.tolerance))
        return steps, rescored

    def _reply(
        self,
        prompt: Sequence[int],
        ids: Sequence[int],
        steps: StepScores,
        rescored: StepScores | None,
        settings: Settings,
        gen: Generation,
        generate_s: float,
        score_s: float,
    ) -> ScoredReply:
        t0 = time.perf_counter()
        engine = self.engine
        texts = token_texts(ids, engine.decode, engine.is_special)
        tokens = build_tokens(ids, steps, texts, engine.is_special, engine.display, rescored, settings.tolerance)
        text = "".join(t.text for t in tokens if not t.special)
        stats = reply_stats([t.logprob for t in tokens])
        score_s += time.perf_counter() - t0
        return ScoredReply(
            model=engine.model_name,
            backend=engine.backend,
            text=text,
            prompt_token_ids=tuple(prompt),
            tokens=tuple(tokens),
            stats=stats,
            timings=Timings(generate_s=round(generate_s, 4), score_s=round(score_s, 4)),
            finish_reason=gen.finish_reason,
            verified=rescored is not None,
            notes=tuple(gen.notes),
        )
