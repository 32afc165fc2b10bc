"""The one shared engine behind the CLI and the web demo: validation, running, scoring.

`Service.stream` is the whole pipeline of one turn (messages -> prompt ids -> engine -> scores
-> ScoredReply); `Service.chat` is that stream drained. The UI and the CLI only loop over it and
render what it yields.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import torch

from .batching import make_runner
from .calibration import calibration
from .detokenize import Detokenizer, token_texts
from .engines.base import Engine, GenerateRequest, Generation
from .errors import BadInput, GreedyScoreError, InputTooLong, ModelFailed, OutOfMemory, Unsupported
from .scoring import StepScores, build_tokens, compare_engine_logprobs, empty_scores
from .stats import reply_stats
from .text_input import check_text
from .types import MAX_TOP_K, ROLES, Message, ModelIdentity, ScoredReply, Settings, TextDelta, Timings

T = TypeVar("T")
CHARS_PER_TOKEN_CAP = 16  # a message longer than context x this cannot fit: refuse before tokenizing
HEARTBEAT_S = 0.25  # a stream yields at least this often, so its consumer can stop it


# --- parsing and validation (no model needed) -----------------------------------------------------
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
        out.append(Message(check_text(m["role"], f"message {i}'s role"), check_text(m["content"], f"message {i}")))
    return out


def parse_messages_json(text: str, what: str = "the conversation") -> list[Message]:
    """Example: parse_messages_json('[{"role": "user", "content": "hi"}]') -> [Message("user", "hi")]"""
    try:
        data = json.loads(text or "")
    except json.JSONDecodeError as ex:
        raise BadInput(f'{what} is not valid JSON [{{"role", "content"}}, ...]: {ex.msg} (line {ex.lineno})') from ex
    return parse_messages(data)


def shown(value: Any) -> str:
    """A value for a message, short even when a client sent something huge.

    Example: shown(10**5000) -> "a 5,001-digit number"; shown(3) -> "3"
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        digits = int((value.bit_length() - 1) * math.log10(2))  # a lower bound, then exact
        while abs(value) >= 10**digits:
            digits += 1
        return f"a {digits:,}-digit number"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def whole_number(name: str, value: Any) -> int:
    """A whole number from a UI/API value (20 or 20.0) that fits 64 bits; bools, fractions and
    anything bigger are input errors."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadInput(f"{name} must be a whole number, got {shown(value)}")
    if isinstance(value, float) and (not math.isfinite(value) or value % 1):
        raise BadInput(f"{name} must be a whole number, got {shown(value)}")
    if not -(2**63) <= value < 2**63:
        raise BadInput(f"{name} must be a whole number of at most 64 bits, got {shown(value)}")
    return int(value)


def parse_settings(max_new_tokens: Any, top_k: Any, verify: Any = False) -> Settings:
    """Settings from loosely typed UI/API inputs, checked. Example: parse_settings(32.0, 5) -> Settings(32, 5)"""
    if not isinstance(verify, bool):
        raise BadInput(f"verify must be true or false, got {verify!r}")
    settings = Settings(max_new_tokens=whole_number("max_new_tokens", max_new_tokens),
                        top_k=whole_number("top_k", top_k), verify=verify)
    check_settings(settings)
    return settings


def check_settings(settings: Settings, context_length: int | None = None) -> None:
    """Settings in range (the context check only once a model is known)."""
    n = settings.max_new_tokens
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise BadInput(f"max_new_tokens must be a positive integer, got {shown(n)}")
    if n >= 2**63:
        raise BadInput(f"max_new_tokens must be a positive integer of at most 64 bits, got {shown(n)}")
    if context_length is not None and n >= context_length:
        raise BadInput(f"max_new_tokens {n:,} is beyond the model's context of {context_length:,} tokens")
    k = settings.top_k
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_TOP_K:
        raise BadInput(f"top_k must be a whole number between 1 and {MAX_TOP_K}, got {shown(k)}")
    if not isinstance(settings.verify, bool):
        raise BadInput(f"verify must be true or false, got {shown(settings.verify)}")
    tol = settings.tolerance
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 <= tol < 1:
        raise BadInput(f"tolerance must be a number in [0, 1), got {shown(tol)}")


def check_roles(messages: Sequence[Message]) -> None:
    """Known roles, and every message Unicode text (`text_input`): what any conversation needs
    before a template sees it."""
    for i, m in enumerate(messages):
        check_text(m.content, f"message {i}")
        if m.role not in ROLES:
            check_text(m.role, f"message {i}'s role")
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


def _last(stream: Iterator[TextDelta | ScoredReply]) -> ScoredReply:
    """A stream drained: its last event, the ScoredReply."""
    for event in stream:
        if isinstance(event, ScoredReply):
            return event
    raise AssertionError("a stream always ends with its ScoredReply")


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


class Service:
    """Owns the one engine shared by every visitor and API client.

    A batching engine (transformers) is driven by one worker thread: requests that arrive
    together generate as one batch of up to `max_batch`. An engine that batches by itself
    (LMDeploy) is called from up to `max_batch` threads at once. Both are bounded: beyond
    `max_pending` waiting requests, `Busy`.
    """

    def __init__(self, engine: Engine, max_batch: int = 16, max_pending: int = 64) -> None:
        self.engine = engine
        self.runner = make_runner(engine, max_batch, max_pending)
        self._identity: ModelIdentity | None = None
        self._identity_lock = threading.Lock()

    def close(self) -> None:
        """End the model work (what is queued finishes first). A program that returns early, e.g.
        on bad input, closes its Service first: exiting while the worker thread is still inside
        torch aborts the process."""
        self.runner.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def model_name(self) -> str:
        return self.engine.info.name

    @property
    def backend(self) -> str:
        return self.engine.info.backend

    @property
    def score_source(self) -> str:
        return self.engine.info.score_source

    @property
    def drift(self):
        """A lower-precision engine's measured distance from float32 (`precision.Drift`), or None."""
        return self.engine.info.drift

    @property
    def identity(self) -> ModelIdentity:
        """The model as a shared result records it: its weights are hashed once (the app starts
        that in the background at launch: `threading.Thread(target=lambda: service.identity)`)."""
        with self._identity_lock:
            if self._identity is None:
                from . import __version__
                from .models import weights_identity

                weights = weights_identity(self.engine.info.source)
                self._identity = ModelIdentity(self.model_name, self.backend, weights, self.score_source, __version__)
            return self._identity

    def token_text(self, token_id: int) -> str:
        """One token's readable text (bytes as \\xNN when it is part of a character)."""
        return self.engine.tokenizer.display(token_id)

    # --- validation ----------------------------------------------------------------------
    def check_settings(self, settings: Settings) -> None:
        check_settings(settings, self.engine.info.context_length)

    def check_messages(self, messages: Sequence[Message]) -> None:
        check_messages(messages)
        self._check_chars(sum(len(m.content) for m in messages))

    def _check_chars(self, n_chars: int) -> None:
        ctx = self.engine.info.context_length
        if n_chars > ctx * CHARS_PER_TOKEN_CAP:
            raise InputTooLong(
                f"the prompt is {n_chars:,} characters, far more than the model's context of {ctx:,} tokens: shorten it"
            )

    def _check_fit(self, n_prompt: int, max_new_tokens: int, what: str = "prompt") -> None:
        ctx = self.engine.info.context_length
        if n_prompt >= ctx:
            raise InputTooLong(
                f"the {what} is {n_prompt:,} tokens, longer than the model's context of {ctx:,} tokens: shorten it"
            )
        if n_prompt + max_new_tokens > ctx:
            raise InputTooLong(
                f"the {what} is {n_prompt:,} tokens; with max_new_tokens {max_new_tokens:,} that is beyond the "
                f"model's context of {ctx:,} tokens: lower max_new_tokens to {ctx - n_prompt:,} or shorten the {what}"
            )

    # --- a chat turn ---------------------------------------------------------------------------
    def stream(
        self,
        messages: Sequence[Message],
        settings: Settings = Settings(),
        cancel: threading.Event | None = None,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> Iterator[TextDelta | ScoredReply]:
        """One greedy turn: TextDeltas while it generates, then the ScoredReply.

        Steps: validate (here, before the first `next`: bad input raises at once); template ->
        prompt ids; then, when iterated: submit the ids to the shared engine; decode the new ids
        of each step into a TextDelta (a heartbeat every `heartbeat_s` when nothing comes);
        score the generated ids (single pass when the engine handed over logits, else a
        rescoring of exactly those ids; plus verification); yield the ScoredReply.
        Setting `cancel`, or closing the stream early, stops the generation: the reply then ends
        at the last token the model chose, with finish_reason "abort".
        """
        self.check_settings(settings)
        self.check_messages(messages)
        if self.engine.info.server_template:  # a remote server templates (and checks the fit): its ids come back
            return self._turn([], settings, cancel or threading.Event(), heartbeat_s, messages=tuple(messages))
        prompt = self._prompt_ids(messages)
        self._check_fit(len(prompt), settings.max_new_tokens)
        return self._turn(prompt, settings, cancel or threading.Event(), heartbeat_s)

    def chat(self, messages: Sequence[Message], settings: Settings = Settings(),
             cancel: threading.Event | None = None) -> ScoredReply:
        """`stream` drained: the ScoredReply of one turn."""
        return _last(self.stream(messages, settings, cancel))

    def _turn(
        self, prompt: list[int], settings: Settings, cancel: threading.Event, heartbeat_s: float,
        forced: tuple[int, ...] = (), forked_at: int | None = None, messages: tuple[Message, ...] = (),
    ) -> Iterator[TextDelta | ScoredReply]:
        """Generate after prompt + forced (a fork's prefix, scored teacher-forced first), or after
        `messages` on an engine whose server templates them; stream; score."""
        events: queue.SimpleQueue[list[int] | Future] = queue.SimpleQueue()  # new ids, then the done Future
        detok = Detokenizer(self.engine.tokenizer.decode, self.engine.tokenizer.is_special)
        t0 = time.perf_counter()
        done = False
        try:
            forced_steps = self._model(self.engine.score_ids, prompt, list(forced), settings.top_k) if forced else None
            for tok in forced:
                detok.push(tok)
            if detok.text:
                yield TextDelta(detok.text, detok.text)
            if forced and forced[-1] in self.engine.info.stop_ids:  # forked onto an end of turn: nothing follows
                future: Future = Future()
                future.set_result(Generation((), "stop"))
            else:
                request = GenerateRequest((*prompt, *forced), settings.max_new_tokens, settings.top_k, events.put,
                                          cancel, messages)
                future = self.runner.submit(request)
            future.add_done_callback(events.put)
            while True:
                try:
                    item = events.get(timeout=heartbeat_s)
                except queue.Empty:
                    yield TextDelta("", detok.text)
                    continue
                if isinstance(item, Future):
                    break
                before = detok.text
                for tok in item:
                    detok.push(tok)
                if detok.text != before:
                    yield TextDelta(detok.text[len(before) :], detok.text)
            with model_errors():
                gen = future.result()
            generate_s = time.perf_counter() - t0
            reply = self._scored_turn(prompt, gen, settings, generate_s, forced, forced_steps, forked_at)
            done = True
            yield reply
        finally:
            if not done:  # closed early (Stop) or failed: free the engine's row
                cancel.set()

    def _scored_turn(
        self, prompt: list[int], gen: Generation, settings: Settings, generate_s: float,
        forced: tuple[int, ...] = (), forced_steps: StepScores | None = None, forked_at: int | None = None,
    ) -> ScoredReply:
        """Scores of the ids the engine generated after prompt + forced, plus verification and the
        engine's own check; a fork's forced prefix (already scored) comes first."""
        t0 = time.perf_counter()
        if gen.prompt_ids is not None:  # what the server made of the messages
            prompt = list(gen.prompt_ids)
        context = [*prompt, *forced]
        new = list(gen.token_ids)
        ids = [*forced, *new]
        verify = settings.verify and gen.finish_reason != "abort" and bool(ids)  # a stopped reply is not verified
        steps = gen.steps
        if not new:
            steps = empty_scores(settings.top_k)
        elif steps is None:  # the engine gave no usable logits (LMDeploy): rescore exactly its ids
            steps = self._model(self.engine.score_ids, context, new, settings.top_k, follow_up=True)
        notes = gen.notes
        if gen.engine_logprobs is not None:
            tol = max(settings.tolerance, self.engine.info.logprob_tolerance)  # the engine's dtype
            notes += tuple(compare_engine_logprobs(gen.engine_logprobs, new, steps, tol))
        if forced_steps is not None:
            steps = StepScores.cat([forced_steps, steps])
        rescored = None
        if verify and gen.steps is None:  # every score already comes from a teacher-forced rescoring
            rescored = steps
        elif verify and not prompt:
            notes += ("verification unavailable: the server did not say which prompt ids it used",)
        elif verify:
            try:
                rescored = self._model(self.engine.score_ids, prompt, ids, settings.top_k, cache=gen.cache,
                                       follow_up=True)
            except Unsupported as ex:  # the reply stands; only its check is missing
                notes += (f"verification unavailable: {ex}",)
        return self._reply(prompt, ids, steps, rescored, settings, gen.finish_reason, notes,
                           Timings(generate_s, time.perf_counter() - t0), forked_at)

    # --- forks ---------------------------------------------------------------------------------
    def stream_fork(
        self,
        messages: Sequence[Message],
        reply_token_ids: Sequence[int] | None,
        at: int,
        token_id: int,
        settings: Settings = Settings(),
        cancel: threading.Event | None = None,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> Iterator[TextDelta | ScoredReply]:
        """The road not taken: the reply had the model chosen `token_id` at position `at`.

        Steps: validate (here, before the first `next`; with no reply ids the original is a fresh
        greedy reply, generated here first); prefix = the reply's first `at` tokens + token_id,
        scored teacher-forced after the prompt; greedy continuation from prompt + prefix through
        the shared engine (batched with other work, `settings.max_new_tokens` new tokens); one
        ScoredReply over the whole path from the reply's start, `forked_at` = at.
        """
        self.check_settings(settings)
        self.check_messages(messages)
        at, token_id = whole_number("at", at), whole_number("token_id", token_id)
        vocab = self.engine.info.vocab_size
        if at < 0:
            raise BadInput(f"at must be a position in the reply, 0 or more, got {at}")
        if not 0 <= token_id < vocab:  # both before a fresh original reply is generated
            raise BadInput(f"unknown token id {token_id}: this model's ids are 0 to {vocab - 1}")
        if reply_token_ids is None or (isinstance(reply_token_ids, list | tuple) and not reply_token_ids):
            reply_token_ids = [t.id for t in self.chat(messages, replace(settings, verify=False)).tokens]
        if not isinstance(reply_token_ids, list | tuple) or not reply_token_ids:
            raise BadInput("reply_token_ids must be the original reply's token ids, a non-empty list")
        reply = [whole_number("reply token id", t) for t in reply_token_ids]
        if at >= len(reply):
            raise BadInput(f"at must be a position in the reply, 0 to {len(reply) - 1}, got {at}")
        for t in reply[:at]:
            if not 0 <= t < vocab:
                raise BadInput(f"unknown token id {t}: this model's ids are 0 to {vocab - 1}")
        prompt = self._prompt_ids(messages)
        forced = (*reply[:at], token_id)
        ends = token_id in self.engine.info.stop_ids
        self._check_fit(len(prompt) + len(forced), 0 if ends else settings.max_new_tokens, "fork (prompt + prefix)")
        return self._turn(prompt, settings, cancel or threading.Event(), heartbeat_s, forced, at)

    def fork(
        self, messages: Sequence[Message], reply_token_ids: Sequence[int] | None, at: int, token_id: int,
        settings: Settings = Settings(),
    ) -> ScoredReply:
        """`stream_fork` drained."""
        return _last(self.stream_fork(messages, reply_token_ids, at, token_id, settings))

    # --- re-runs of stored results -------------------------------------------------------------
    def _check_ids(self, ids: Sequence[int], what: str) -> list[int]:
        vocab = self.engine.info.vocab_size
        out = [whole_number(f"{what} token id", t) for t in ids]
        bad = next((t for t in out if not 0 <= t < vocab), None)
        if bad is not None:
            raise BadInput(f"the {what} has token id {bad}, outside this model's vocabulary (0 to {vocab - 1}): "
                           "it was made with another tokenizer")
        return out

    def rerun(self, prompt_ids: Sequence[int], settings: Settings, forced: Sequence[int] = (),
              forked_at: int | None = None, messages: Sequence[Message] = ()) -> ScoredReply:
        """Greedy generation again from stored prompt ids (and a fork's forced prefix): does this
        model reproduce a shared reply? An engine whose server templates gets `messages` instead."""
        self.check_settings(settings)
        forced_ids = tuple(self._check_ids(forced, "fork prefix"))
        if self.engine.info.server_template and not forced_ids:
            return self.chat(messages, settings)
        prompt = self._check_ids(prompt_ids, "prompt")
        if not prompt:
            raise BadInput("the shared result has no prompt ids to run again")
        ends = bool(forced_ids) and forced_ids[-1] in self.engine.info.stop_ids
        self._check_fit(len(prompt) + len(forced_ids), 0 if ends else settings.max_new_tokens)
        return _last(self._turn(prompt, settings, threading.Event(), HEARTBEAT_S, forced_ids, forked_at))

    def prompt_matches(self, messages: Sequence[Message], prompt_ids: Sequence[int]) -> bool | None:
        """Are `prompt_ids` what this model's template makes of `messages`? None where that cannot
        be asked (a remote server templates; no messages)."""
        if self.engine.info.server_template or not messages:
            return None
        try:
            return tuple(self.engine.tokenizer.prompt_ids(list(messages))) == tuple(prompt_ids)
        except Exception:  # noqa: BLE001 - messages this template refuses: they cannot be its prompt
            return False

    def rescore(self, context: Sequence[int], target: Sequence[int], settings: Settings) -> ScoredReply:
        """Teacher-forced scores of stored ids again (a shared Score-text result)."""
        self.check_settings(settings)
        context_ids, target_ids = self._check_ids(context, "context"), self._check_ids(target, "text")
        if not context_ids or not target_ids:
            raise BadInput("the shared result has no token ids to score again")
        return self._teacher_forced(context_ids, target_ids, settings, "text")

    # --- teacher forcing -------------------------------------------------------------------
    def score_text(self, text: str, settings: Settings = Settings(), prompt: str | None = None) -> ScoredReply:
        """Teacher-forced scores of `text`: plain text after BOS, or as the assistant's reply to `prompt`."""
        if prompt is not None:
            return self.score_reply([Message("user", prompt)], text, settings)
        self.check_settings(settings)
        if not check_text(text, "the text").strip():
            raise BadInput("empty text: paste some text to score")
        self._check_chars(len(text))
        context, target = self._text_ids(text)
        if not context:  # no BOS: the first token has nothing to be predicted from
            context, target = target[:1], target[1:]
        return self._teacher_forced(context, target, settings, "text")

    def score_reply(self, messages: Sequence[Message], text: str, settings: Settings = Settings()) -> ScoredReply:
        """Teacher-forced scores of `text` as the assistant's reply after `messages` (no messages:
        plain text after BOS): the same reply under another system prompt or conversation."""
        if not messages:
            return self.score_text(text, settings)
        self.check_settings(settings)
        if not check_text(text, "the text").strip():
            raise BadInput("empty text: paste some text to score")
        check_roles(messages)
        self._check_chars(len(text) + sum(len(m.content) for m in messages))
        return self._teacher_forced(self._prompt_ids(messages), self._text_ids(text)[1], settings, "text")

    def score_messages(self, messages: Sequence[Message], settings: Settings = Settings()) -> ScoredReply:
        """Teacher-forced scores of a whole conversation, every templated token after the first."""
        self.check_settings(settings)
        if not messages or not any(m.content.strip() for m in messages):
            raise BadInput("empty conversation: give at least one message with text")
        check_roles(messages)  # any last turn may be scored
        self._check_chars(sum(len(m.content) for m in messages))
        ids = self._prompt_ids(messages)
        return self._teacher_forced(ids[:1], ids[1:], settings, "conversation")

    def _teacher_forced(self, context: list[int], target: list[int], settings: Settings, what: str) -> ScoredReply:
        self._check_fit(len(context) + len(target), 0, what)
        t0 = time.perf_counter()
        steps = self._model(self.engine.score_ids, context, target, settings.top_k)
        reply = self._reply(context, target, steps, None, settings, "stop", (), Timings(0.0, time.perf_counter() - t0))
        return replace(reply, calibration=calibration(reply.tokens))

    # --- the guessing game -------------------------------------------------------------------
    def guess_ids(self, guess: str) -> list[int]:
        """A learner's guess as token ids (plain text, no special tokens)."""
        if not check_text(guess, "the guess").strip():
            raise BadInput("type a guess first")
        if len(guess) > 200:
            raise BadInput("a guess is a word or two: 200 characters at most")
        ids = self._text_ids(guess)[1]
        if not ids:
            raise BadInput("that guess has no tokens: type a word or a sign")
        return ids

    def score_continuation(self, context_ids: Sequence[int], ids: Sequence[int]) -> tuple[float, int]:
        """(log p(ids) after context_ids, summed; rank of the first id): one teacher-forced pass."""
        if not ids or not context_ids:
            raise BadInput("nothing to score: a guess needs tokens and a context")
        self._check_fit(len(context_ids) + len(ids), 0, "text with your guess")
        steps = self._model(self.engine.score_ids, list(context_ids), list(ids), 1)
        return float(steps.logprob.sum()), int(steps.rank[0])

    # --- helpers ---------------------------------------------------------------------------
    def _prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The chat template's ids; a template or tokenizer failure is a domain error like any other."""
        with model_errors():
            return list(self.engine.tokenizer.prompt_ids(messages))

    def _text_ids(self, text: str) -> tuple[list[int], list[int]]:
        with model_errors():
            return self.engine.tokenizer.text_ids(text)

    def _model(self, fn: Callable[..., T], *args: Any, follow_up: bool = False, **kwargs: Any) -> T:
        """Model work other than generation, where the runner puts it; engine failures made domain
        errors. follow_up: work for a request already accepted (its reply exists), never refused."""
        with model_errors():
            if follow_up:
                return self.runner.follow_up(fn, *args, **kwargs)
            return self.runner.call(fn, *args, **kwargs)

    def _reply(
        self,
        prompt: Sequence[int],
        ids: Sequence[int],
        steps: StepScores,
        rescored: StepScores | None,
        settings: Settings,
        finish_reason: str,
        notes: tuple[str, ...],
        timings: Timings,
        forked_at: int | None = None,
    ) -> ScoredReply:
        """Tensors -> ScoredTokens (texts byte-faithful), stats; the time spent here counts as scoring."""
        t0 = time.perf_counter()
        engine = self.engine
        texts = token_texts(ids, engine.tokenizer.decode, engine.tokenizer.is_special)
        tokens = build_tokens(ids, steps, texts, engine.tokenizer.is_special, engine.tokenizer.display, rescored,
                              settings.tolerance)
        score_s = timings.score_s + time.perf_counter() - t0
        return ScoredReply(
            model=engine.info.name,
            backend=engine.info.backend,
            text="".join(t.text for t in tokens if not t.special),
            prompt_token_ids=tuple(prompt),
            tokens=tuple(tokens),
            stats=reply_stats([t.logprob for t in tokens]),
            timings=Timings(generate_s=round(timings.generate_s, 4), score_s=round(score_s, 4)),
            finish_reason=finish_reason,
            verified=rescored is not None,
            notes=notes,
            score_source=engine.info.score_source,
            forked_at=forked_at,
        )
