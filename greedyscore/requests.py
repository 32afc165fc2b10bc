"""What a visitor, an API client or the CLI asks the Service for, checked once, before any model work.

A request is frozen and already validated: building one from loosely typed input (`parse_*`, the
dataclasses' own checks) refuses anything malformed with a message that names it. What needs the
model (the context length, the vocabulary) is checked by the Service. Pure: no torch, no gradio.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import BadInput
from .text_input import check_text
from .types import MAX_TOP_K, ROLES, Message, Sampler, Settings


# --- loosely typed values -------------------------------------------------------------------------
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


def token_ids(values: Any, what: str) -> tuple[int, ...]:
    """A list of token ids from a client, each a whole number (the vocabulary is the Service's check)."""
    if not isinstance(values, list | tuple):
        raise BadInput(f"{what} must be a list of token ids, got {shown(values)}")
    return tuple(whole_number(f"{what} token id", t) for t in values)


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


def parse_settings(max_new_tokens: Any, top_k: Any, verify: Any = False) -> Settings:
    """Settings from loosely typed UI/API inputs, checked. Example: parse_settings(32.0, 5) -> Settings(32, 5)"""
    if not isinstance(verify, bool):
        raise BadInput(f"verify must be true or false, got {verify!r}")
    settings = Settings(max_new_tokens=whole_number("max_new_tokens", max_new_tokens),
                        top_k=whole_number("top_k", top_k), verify=verify)
    check_settings(settings)
    return settings


# --- checks ---------------------------------------------------------------------------------------
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


def _text(text: Any, what: str = "the text", empty: str = "empty text: paste some text to score") -> str:
    if not isinstance(text, str):
        raise BadInput(f"{what} must be a string, got {shown(text)}")
    if not check_text(text, what).strip():
        raise BadInput(empty)
    return text


# --- the requests ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chat:
    """One greedy reply to a conversation that ends in a user turn."""

    messages: tuple[Message, ...]
    settings: Settings = Settings()

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        check_settings(self.settings)
        check_messages(self.messages)


@dataclass(frozen=True)
class Fork:
    """The road not taken: the reply had the model chosen `token_id` at position `at`, then greedy on.
    `reply_ids` None or empty: the original is a fresh greedy reply, generated first."""

    messages: tuple[Message, ...]
    reply_ids: tuple[int, ...] | None
    at: int
    token_id: int
    settings: Settings = Settings()

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        check_settings(self.settings)
        check_messages(self.messages)
        at, token_id = whole_number("at", self.at), whole_number("token_id", self.token_id)
        if at < 0:
            raise BadInput(f"at must be a position in the reply, 0 or more, got {at}")
        object.__setattr__(self, "at", at)
        object.__setattr__(self, "token_id", token_id)
        if self.reply_ids is None or (isinstance(self.reply_ids, list | tuple) and not self.reply_ids):
            object.__setattr__(self, "reply_ids", None)
            return
        if not isinstance(self.reply_ids, list | tuple):
            raise BadInput("reply_token_ids must be the original reply's token ids, a non-empty list")
        object.__setattr__(self, "reply_ids", token_ids(self.reply_ids, "reply"))
        if at >= len(self.reply_ids):
            raise BadInput(f"at must be a position in the reply, 0 to {len(self.reply_ids) - 1}, got {at}")


@dataclass(frozen=True)
class Rerun:
    """Greedy generation again from stored prompt ids (and a fork's forced prefix): does this model
    reproduce a shared reply? An engine whose server templates gets `messages` instead."""

    prompt_ids: tuple[int, ...]
    settings: Settings = Settings()
    forced: tuple[int, ...] = ()
    forked_at: int | None = None
    messages: tuple[Message, ...] = ()

    def __post_init__(self) -> None:
        check_settings(self.settings)
        object.__setattr__(self, "prompt_ids", token_ids(self.prompt_ids, "prompt"))
        object.__setattr__(self, "forced", token_ids(self.forced, "fork prefix"))
        object.__setattr__(self, "messages", tuple(self.messages))


@dataclass(frozen=True)
class ScoreText:
    """Teacher-forced scores of `text`: plain text after BOS, or the assistant's reply to `messages`."""

    text: str
    messages: tuple[Message, ...] = ()
    settings: Settings = Settings()

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        check_settings(self.settings)
        _text(self.text)
        check_roles(self.messages)


@dataclass(frozen=True)
class ScoreConversation:
    """Teacher-forced scores of a whole conversation, every templated token after the first."""

    messages: tuple[Message, ...]
    settings: Settings = Settings()

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        check_settings(self.settings)
        if not self.messages or not any(m.content.strip() for m in self.messages):
            raise BadInput("empty conversation: give at least one message with text")
        check_roles(self.messages)  # any last turn may be scored


@dataclass(frozen=True)
class ScoreIds:
    """Teacher-forced scores of stored or tokenised ids after a context (a shared Score-text
    result again; a guess in the guessing game)."""

    context: tuple[int, ...]
    target: tuple[int, ...]
    settings: Settings = Settings()
    what: str = "text"

    def __post_init__(self) -> None:
        check_settings(self.settings)
        object.__setattr__(self, "context", token_ids(self.context, "context"))
        object.__setattr__(self, "target", token_ids(self.target, self.what))
        if not self.context or not self.target:
            raise BadInput(f"nothing to score: the {self.what} needs token ids and a context")


def check_sampler(sampler: Sampler) -> None:
    """A sampler to look through: temperature 0 (greedy) to 100, top-k 0 (off) or more, top-p in (0, 1]."""
    t, k, p = sampler.temperature, sampler.top_k, sampler.top_p
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 100:
        raise BadInput(f"temperature must be a number from 0 (greedy) to 100, got {shown(t)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < 2**31:
        raise BadInput(f"the sampler's top_k must be a whole number, 0 for off, got {shown(k)}")
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1:
        raise BadInput(f"top_p must be a number in (0, 1], 1 for off, got {shown(p)}")


def parse_sampler(temperature: Any = 1.0, top_k: Any = 0, top_p: Any = 1.0) -> Sampler:
    """A Sampler from loosely typed UI/API values. Example: parse_sampler(0.7, 40.0, 0.9) -> Sampler(0.7, 40, 0.9)"""
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise BadInput(f"{name} must be a number, got {shown(value)}")
    sampler = Sampler(float(temperature), whole_number("the sampler's top_k", top_k), float(top_p))
    check_sampler(sampler)
    return sampler


@dataclass(frozen=True)
class Step:
    """One step of a reply the visitor builds: `prefix` (the reply's ids so far, `chosen` the positions
    the visitor picked), then optionally a forced token id or text, then the next-token distribution
    through `sampler`. `finish`: greedy from there to the end instead."""

    messages: tuple[Message, ...]
    prefix: tuple[int, ...] = ()
    chosen: tuple[int, ...] = ()
    force_id: int | None = None
    force_text: str = ""
    sampler: Sampler = Sampler()
    settings: Settings = Settings()
    finish: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        check_settings(self.settings)
        check_messages(self.messages)
        check_sampler(self.sampler)
        object.__setattr__(self, "prefix", token_ids(self.prefix, "prefix"))
        chosen = token_ids(self.chosen, "chosen positions")
        if any(not 0 <= i < len(self.prefix) for i in chosen):
            raise BadInput(f"chosen positions must lie in the prefix, 0 to {len(self.prefix) - 1}")
        object.__setattr__(self, "chosen", tuple(sorted(set(chosen))))
        if self.force_id is not None:
            object.__setattr__(self, "force_id", whole_number("token_id", self.force_id))
        if not isinstance(self.force_text, str):
            raise BadInput(f"the forced text must be a string, got {shown(self.force_text)}")
        if self.force_text:
            check_text(self.force_text, "the forced text")
            if len(self.force_text) > 2000:
                raise BadInput("the forced text is a few words to continue with: 2,000 characters at most")
        if self.force_id is not None and self.force_text:
            raise BadInput("force either a token id or a text, not both")
        if self.finish and (self.force_id is not None or self.force_text):
            raise BadInput("finish continues the path as it is: force a token in a step of its own first")


Request = Chat | Fork | Rerun | ScoreText | ScoreConversation | ScoreIds


def guess_text(guess: Any) -> str:
    """A learner's guess, checked before it is tokenised."""
    text = _text(guess, "the guess", "type a guess first")
    if len(text) > 200:
        raise BadInput("a guess is a word or two: 200 characters at most")
    return text
