"""The Engine protocol: what the service needs from any model runtime.

An engine does I/O with a model on token ids: chat template -> prompt ids, greedy generation of
those exact ids, and logits of given ids (teacher forcing). It never decides what a score means:
that is `scoring`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..scoring import StepScores
from ..types import Message

OnIds = Callable[[list[int]], None]  # called with the newly generated ids, as they come


@dataclass(frozen=True)
class GenerateRequest:
    """One greedy generation from token ids (one row of a batch).

    `on_ids` and `cancel` are called/polled from the engine's own thread. `messages` is set
    instead of `prompt_ids` for an engine whose server applies the chat template (remote).
    """

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    top_k: int
    on_ids: OnIds | None = None
    cancel: threading.Event | None = None
    messages: tuple[Message, ...] = ()


@dataclass(frozen=True)
class Generation:
    """What one greedy generation produced: the ids the model chose, stop token included.

    finish_reason: "stop" (a stop id), "length" (max_new_tokens), "abort" (cancelled before
    either: the ids end at the last token the model really chose).
    """

    token_ids: tuple[int, ...]
    finish_reason: str
    steps: StepScores | None = None  # single-pass scores, when the engine handed over logits
    engine_logprobs: tuple[dict[int, float], ...] | None = None  # the engine's own (lmdeploy raw_logprobs)
    cache: Any = None  # opaque prompt KV cache for verification rescoring
    notes: tuple[str, ...] = ()
    prompt_ids: tuple[int, ...] | None = None  # what a server templated the messages into (remote engines)


class Decoder(Protocol):
    """Rows decoding together, owned by the scheduler's thread."""

    def __len__(self) -> int: ...

    def join(self, request: GenerateRequest, tag: Any) -> None:
        """Prefill the request and add its row; raising fails this request only."""

    def step(self) -> list[tuple[Any, Generation | BaseException]]:
        """One token for every row; -> (tag, outcome) of the rows that left. Raising fails every row."""

    def clear(self) -> list[Any]:
        """Drop every row (after a failed step); -> their tags."""

    def close(self) -> None:
        """Release what the decoder holds (threads, caches) once the scheduler has ended."""


@dataclass(frozen=True)
class Drift:
    """How far a lower-precision engine's probabilities are from float32's (`precision.measure_drift`)."""

    max_dp: float
    mean_dp: float
    tokens: int
    precision: str

    def note(self) -> str:
        return (f"{self.precision}, approximate: |Δp| vs float32 max {self.max_dp:.3f}, mean {self.mean_dp:.4f} "
                f"(measured at load on {self.tokens} tokens)")


@dataclass(frozen=True)
class EngineInfo:
    """What an engine is, fixed when its load returns: the service, UI and CLI read it, nothing probes."""

    name: str  # the model's name, as shown
    backend: str
    # what a score is computed from on this engine, for the UI and CLI to say (e.g. "float32 logits
    # (cpu), softmax in float32"); `scores_from` adds a lower precision's drift
    score_source: str
    context_length: int
    vocab_size: int  # token ids are 0 .. vocab_size - 1
    stop_ids: frozenset[int]
    # True: the engine schedules concurrent requests itself (LMDeploy's async engine, a server), so
    # the service calls it from many threads. False: one thread owns the model and batches for it.
    concurrent: bool = False
    # True: the server applies the chat template (a remote engine): turns are sent as messages and
    # the Generation says which prompt ids they became. False: `tokenizer.prompt_ids` makes them here.
    server_template: bool = False
    precision: str = "float32"  # the weights' (transformers): the Compare tab offers others only from float32
    drift: Drift | None = None  # a lower precision's measured distance from float32
    source: str | None = None  # the weights' path or hub id: a shared result's identity, the Compare tab's reload
    logprob_tolerance: float = 0.0  # the rounding allowed when checking the engine's own logprobs (its dtype's)
    layout: str = ""  # how the CPU engine's linear layers are laid out (engines/layout.py): "native", ...

    def scores_from(self) -> str:
        """What every reply and shared result says its scores came from: a lower precision's drift included."""
        return self.score_source if self.drift is None else f"{self.score_source}; {self.drift.note()}"


class Tokenizer(Protocol):
    """Token ids <-> text, as the engine's model reads and writes them."""

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """Token ids of the chat-templated messages, generation prompt appended."""

    def text_ids(self, text: str) -> tuple[list[int], list[int]]:
        """(context, target) ids for teacher-forced scoring of plain text: context is BOS or []."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids, special tokens kept, no clean-up of spaces."""

    def display(self, token_id: int) -> str:
        """A single token's readable text (bytes shown as \\xNN when not valid UTF-8 alone)."""

    def is_special(self, token_id: int) -> bool: ...


class Engine(Protocol):
    info: EngineInfo
    tokenizer: Tokenizer

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        """Greedy decoding (argmax of raw logits) of each request's prompt ids, until a stop id,
        its max_new_tokens or its cancel event; one Generation per request, in order."""

    def decoder(self, max_rows: int = 16) -> Decoder:
        """Rows for the scheduler to join and step: the engine's own batch, or `threads.EngineThreads`
        for an engine that batches by itself."""

    def score_ids(
        self, context_ids: Sequence[int], target_ids: Sequence[int], top_k: int, cache: Any = None
    ) -> StepScores:
        """Teacher-forced scores of target_ids after context_ids (context must be non-empty)."""

    def logits(self, ids: Sequence[int], start: int, cache: Any = None) -> Iterator[torch.Tensor]:
        """Raw logits over the whole vocabulary at positions start .. len(ids) - 1 (row j predicts the
        token after ids[start + j]), in chunks of rows; `Unsupported` where no whole row is known."""
