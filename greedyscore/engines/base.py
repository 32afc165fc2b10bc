"""The Engine protocol: what the service needs from any model runtime.

An engine does I/O with a model: chat template -> prompt ids, greedy generation, and logits
of given ids (teacher forcing). It never decides what a score means: that is `scoring`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..scoring import StepScores
from ..types import Message

OnIds = Callable[[list[int]], None]  # called with the newly generated ids, as they come


@dataclass
class Generation:
    """One greedy generation: the ids the engine produced, stop token included."""

    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "abort"
    steps: StepScores | None = None  # single-pass scores, when the engine handed over logits
    engine_logprobs: list[dict[int, float]] | None = None  # the engine's own (lmdeploy raw_logprobs)
    cache: Any = None  # opaque prompt KV cache for verification rescoring
    notes: list[str] = field(default_factory=list)


@dataclass
class GenerateRequest:
    """One row of a batched greedy generation."""

    prompt_ids: Sequence[int]
    max_new_tokens: int
    top_k: int
    on_ids: OnIds | None = None
    cancel: threading.Event | None = None



class Engine(Protocol):
    model_name: str
    backend: str
    context_length: int
    stop_ids: frozenset[int]

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of the chat-templated messages, generation prompt appended."""

    def text_ids(self, text: str) -> tuple[list[int], list[int]]:
        """(context, target) ids for teacher-forced scoring of plain text: context is BOS or []."""

    def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        top_k: int,
        on_ids: OnIds | None = None,
        cancel: threading.Event | None = None,
        messages: Sequence[Message] | None = None,
    ) -> Generation:
        """Greedy decoding (argmax of raw logits) until a stop id or max_new_tokens.

        `messages` are the ones prompt_ids were built from: an engine that templates them itself
        (LMDeploy's pipeline) must check it consumed exactly len(prompt_ids) tokens.
        """

    def score_ids(
        self, context_ids: Sequence[int], target_ids: Sequence[int], top_k: int, cache: Any = None
    ) -> StepScores:
        """Teacher-forced scores of target_ids after context_ids (context must be non-empty)."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids, special tokens kept, no clean-up of spaces."""

    def display(self, token_id: int) -> str:
        """A single token's readable text (bytes shown as \\xNN when not valid UTF-8 alone)."""

    def is_special(self, token_id: int) -> bool: ...
