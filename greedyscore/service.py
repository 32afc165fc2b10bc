"""The one shared engine behind the CLI and the web demo: `Service.run(request)`.

A request (`greedyscore.requests`) arrives checked; here it is checked against the model (context
length, vocabulary), templated into ids and handed to `turns`, which generates through the one
scheduler and scores. `run` yields the stream's events: TextDeltas, then the ScoredReply. The UI,
the CLI, the guessing game and sharing are all clients of it; `chat`, `stream`, `fork`,
`score_text` and `score_messages` are the library's short forms.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from .engines.base import Engine, EngineInfo, Tokenizer
from .errors import BadInput, InputTooLong
from .requests import Chat, Fork, Request, Rerun, ScoreConversation, ScoreIds, ScoreText, check_settings, guess_text
from .scheduler import Scheduler
from .turns import Turn, Turns, model_errors
from .types import Message, ModelIdentity, ScoredReply, Settings, TextDelta

CHARS_PER_TOKEN_CAP = 16  # a message longer than context x this cannot fit: refuse before tokenizing
HEARTBEAT_S = 0.25  # a stream yields at least this often, so its consumer can stop it
Event = TextDelta | ScoredReply


def last(stream: Iterator[Event]) -> ScoredReply:
    """A stream drained: its last event, the ScoredReply."""
    for event in stream:
        if isinstance(event, ScoredReply):
            return event
    raise AssertionError("a stream always ends with its ScoredReply")


def _stream_of(reply: ScoredReply) -> Iterator[Event]:
    """A teacher-forced reply (scored before `run` returns) as a stream like a generated one's."""
    yield reply


class Service:
    """Owns the one engine shared by every visitor and API client, and the scheduler in front of it:
    up to `max_batch` rows decode together; beyond `max_pending` waiting requests, `Busy`."""

    def __init__(self, engine: Engine, max_batch: int = 16, max_pending: int = 64) -> None:
        self.engine = engine
        self.runner = Scheduler(engine.decoder(max_batch), max_batch, max_pending,
                                inline_calls=not engine.info.concurrent)
        self.turns = Turns(engine, self.runner)
        self._identity: ModelIdentity | None = None
        self._identity_lock = threading.Lock()

    def close(self) -> None:
        """End the model work (what is queued finishes first). A program that returns early closes its
        Service first: exiting while the scheduler's thread is inside torch aborts the process."""
        self.runner.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def info(self) -> EngineInfo:
        """What the engine is (name, backend, score source, precision, drift, context): `EngineInfo`."""
        return self.engine.info

    @property
    def tokenizer(self) -> Tokenizer:
        """The engine's ids <-> text (the guessing game tokenises guesses; sharing compares prompts)."""
        return self.engine.tokenizer

    @property
    def identity(self) -> ModelIdentity:
        """The model as a shared result records it: its weights are hashed once (the app starts that in
        the background at launch)."""
        with self._identity_lock:
            if self._identity is None:
                from . import __version__
                from .models import weights_identity

                e = self.engine
                weights = weights_identity(e.info.source)
                self._identity = ModelIdentity(e.info.name, e.info.backend, weights, e.info.scores_from(), __version__)
            return self._identity

    # --- the one entry point ----------------------------------------------------------------------
    def run(self, request: Request, cancel: threading.Event | None = None,
            heartbeat_s: float = HEARTBEAT_S) -> Iterator[Event]:
        """The request's events: TextDeltas while a reply generates, then its ScoredReply.

        Everything is checked here, before the first `next`: bad input raises at once. Setting
        `cancel`, or closing the stream early, stops a generation: the reply then ends at the last
        token the model chose, with finish_reason "abort".
        """
        check_settings(request.settings, self.engine.info.context_length)
        if isinstance(request, ScoreText | ScoreConversation | ScoreIds):
            context, target = self._score_ids(request)
            return _stream_of(self.turns.teacher_forced(context, target, request.settings))
        return self.turns.stream(self._turn(request), cancel or threading.Event(), heartbeat_s)

    def _turn(self, request: Chat | Fork | Rerun) -> Turn:
        """What to generate after which ids, checked against the model."""
        s, engine = request.settings, self.engine
        if isinstance(request, Chat):
            _check_chars(engine, sum(len(m.content) for m in request.messages))
            if engine.info.server_template:  # a remote server templates (and checks the fit): its ids come back
                return Turn((), s, messages=request.messages)
            return _fit(engine, Turn(tuple(prompt_ids_of(engine, request.messages)), s))
        if isinstance(request, Rerun):
            if engine.info.server_template and not request.forced:
                return self._turn(Chat(request.messages, s))
            if not request.prompt_ids:
                raise BadInput("the shared result has no prompt ids to run again")
            check_vocab(engine, request.forced, "fork prefix")
            check_vocab(engine, request.prompt_ids, "prompt")
            return _fit(engine, Turn(request.prompt_ids, s, request.forced, request.forked_at))
        _check_chars(engine, sum(len(m.content) for m in request.messages))
        check_vocab(engine, (request.token_id,), "fork", unknown=True)
        reply = request.reply_ids
        if reply is None:  # no original given: it is a fresh greedy reply
            reply = tuple(t.id for t in self.chat(request.messages, replace(s, verify=False)).tokens)
            if request.at >= len(reply):
                raise BadInput(f"at must be a position in the reply, 0 to {len(reply) - 1}, got {request.at}")
        check_vocab(engine, reply[:request.at], "fork", unknown=True)
        forced = (*reply[:request.at], request.token_id)
        turn = Turn(tuple(prompt_ids_of(engine, request.messages)), s, forced, request.at)
        return _fit(engine, turn, "fork (prompt + prefix)")

    def _score_ids(self, request: ScoreText | ScoreConversation | ScoreIds) -> tuple[list[int], list[int]]:
        """(context, target) of a teacher-forced request, checked against the model."""
        engine, what = self.engine, "text"
        if isinstance(request, ScoreIds):
            what = request.what
            context = check_vocab(engine, request.context, "context")
            target = check_vocab(engine, request.target, request.what)
        elif isinstance(request, ScoreConversation):
            what = "conversation"
            _check_chars(engine, sum(len(m.content) for m in request.messages))
            ids = prompt_ids_of(engine, request.messages)
            context, target = ids[:1], ids[1:]
        else:
            _check_chars(engine, len(request.text) + sum(len(m.content) for m in request.messages))
            context, target = text_ids_of(engine, request.text)
            if request.messages:
                context = prompt_ids_of(engine, request.messages)
            elif not context:  # no BOS: the first token has nothing to be predicted from
                context, target = target[:1], target[1:]
        check_fit(engine, len(context) + len(target), 0, what)
        return context, target

    # --- the short forms --------------------------------------------------------------------------
    def stream(self, messages: Sequence[Message], settings: Settings = Settings(),
               cancel: threading.Event | None = None, heartbeat_s: float = HEARTBEAT_S) -> Iterator[Event]:
        """One greedy turn: TextDeltas while it generates, then the ScoredReply."""
        return self.run(Chat(tuple(messages), settings), cancel, heartbeat_s)

    def chat(self, messages: Sequence[Message], settings: Settings = Settings(),
             cancel: threading.Event | None = None) -> ScoredReply:
        return last(self.stream(messages, settings, cancel))

    def fork(self, messages: Sequence[Message], reply_token_ids: Sequence[int] | None, at: int, token_id: int,
             settings: Settings = Settings()) -> ScoredReply:
        """The reply had the model chosen `token_id` at position `at`, greedy from there."""
        return last(self.run(Fork(tuple(messages), reply_token_ids, at, token_id, settings)))

    def score_text(self, text: str, settings: Settings = Settings(), prompt: str | None = None,
                   messages: Sequence[Message] = ()) -> ScoredReply:
        """Teacher-forced scores of `text`: plain text after BOS, or as the assistant's reply to `prompt`
        (or after `messages`: the same reply under another system prompt or conversation)."""
        messages = (Message("user", prompt),) if prompt is not None else tuple(messages)
        return last(self.run(ScoreText(text, messages, settings)))

    def score_messages(self, messages: Sequence[Message], settings: Settings = Settings()) -> ScoredReply:
        """Teacher-forced scores of a whole conversation, every templated token after the first."""
        return last(self.run(ScoreConversation(tuple(messages), settings)))

# --- checks against the model -------------------------------------------------------------------
def _check_chars(engine: Engine, n_chars: int) -> None:
    ctx = engine.info.context_length
    if n_chars > ctx * CHARS_PER_TOKEN_CAP:
        raise InputTooLong(
            f"the prompt is {n_chars:,} characters, far more than the model's context of {ctx:,} tokens: shorten it"
        )

def _fit(engine: Engine, turn: Turn, what: str = "prompt") -> Turn:
    """The turn fits the context with its new tokens (none after a fork onto a stop token)."""
    ends = bool(turn.forced) and turn.forced[-1] in engine.info.stop_ids
    check_fit(engine, len(turn.prompt) + len(turn.forced), 0 if ends else turn.settings.max_new_tokens, what)
    return turn

def check_fit(engine: Engine, n: int, new: int, what: str) -> None:
    ctx = engine.info.context_length
    if n >= ctx:
        raise InputTooLong(
            f"the {what} is {n:,} tokens, longer than the model's context of {ctx:,} tokens: shorten it"
        )
    if n + new > ctx:
        raise InputTooLong(
            f"the {what} is {n:,} tokens; with max_new_tokens {new:,} that is beyond the "
            f"model's context of {ctx:,} tokens: lower max_new_tokens to {ctx - n:,} or shorten the {what}"
        )

def check_vocab(engine: Engine, ids: Sequence[int], what: str, unknown: bool = False) -> list[int]:
    vocab = engine.info.vocab_size
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None and unknown:
        raise BadInput(f"unknown token id {bad}: this model's ids are 0 to {vocab - 1}")
    if bad is not None:
        raise BadInput(f"the {what} has token id {bad}, outside this model's vocabulary (0 to {vocab - 1}): "
                       "it was made with another tokenizer")
    return list(ids)

def prompt_ids_of(engine: Engine, messages: Sequence[Message]) -> list[int]:
    """The chat template's ids; a template or tokenizer failure is a domain error like any other."""
    with model_errors():
        return list(engine.tokenizer.prompt_ids(messages))

def text_ids_of(engine: Engine, text: str) -> tuple[list[int], list[int]]:
    with model_errors():
        return engine.tokenizer.text_ids(text)



# --- clients' small questions, asked of the Service's engine ----------------------------------------
def guess_ids(service: Service, guess: Any) -> list[int]:
    """A learner's guess as token ids (plain text, no special tokens)."""
    ids = text_ids_of(service.engine, guess_text(guess))[1]
    if not ids:
        raise BadInput("that guess has no tokens: type a word or a sign")
    return ids


def prompt_matches(service: Service, messages: Sequence[Message], prompt_ids: Sequence[int]) -> bool | None:
    """Are `prompt_ids` what this model's template makes of `messages`? None where that cannot be asked
    (a remote server templates; no messages)."""
    if service.engine.info.server_template or not messages:
        return None
    try:
        return tuple(service.engine.tokenizer.prompt_ids(list(messages))) == tuple(prompt_ids)
    except Exception:  # noqa: BLE001 - messages this template refuses: they cannot be its prompt
        return False


def continuation_score(service: Service, context_ids: Sequence[int], ids: Sequence[int]) -> tuple[float, int]:
    """(log p(ids) after context_ids, summed; rank of the first id): one teacher-forced pass."""
    reply = last(service.run(ScoreIds(tuple(context_ids), tuple(ids), Settings(top_k=1), "text with your guess")))
    return sum(t.logprob for t in reply.tokens), reply.tokens[0].rank
