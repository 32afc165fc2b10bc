"""Second configurations to score the same text under (the Compare tab): the same model in
bfloat16 or int8, or another model. Each is loaded on first use, once, as its own Service."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .align import Comparison, compare
from .divergence import divergence
from .errors import BadInput
from .service import Service
from .types import Message, Settings

SYSTEM = "another system prompt"
CONVERSATION = "another conversation"
AGAINST = (SYSTEM, CONVERSATION, "bfloat16", "int8", "another model")


@dataclass(frozen=True)
class Side:
    service: Service
    label: str


class Variants:
    """`other` is --compare-model. Precision variants reload the main engine's own model (its
    `source`), so they exist only when that engine is a float32 transformers one."""

    def __init__(self, main: Service, other: str | None = None) -> None:
        self.main = main
        self.other = other
        self._loaded: dict[str, Service] = {}
        self._lock = threading.Lock()

    def loaded(self) -> list[Service]:
        """The second configurations loaded so far (their owner closes them)."""
        with self._lock:
            return list(self._loaded.values())

    def _precisions(self) -> bool:
        info = self.main.engine.info
        return info.backend == "transformers" and info.precision == "float32" and info.source is not None

    def choices(self) -> tuple[str, ...]:
        return (SYSTEM, CONVERSATION, *(("bfloat16", "int8") if self._precisions() else ()),
                *(("another model",) if self.other else ()))

    def side(self, against: str) -> Side:
        """The Service that scores side B, loaded now if it is the first use."""
        if against in (SYSTEM, CONVERSATION):
            return Side(self.main, self.main.info.name)
        if against not in self.choices():
            why = ""
            if against == "another model":
                why = " (start the app with --compare-model M)"
            elif against in ("bfloat16", "int8"):
                info = self.main.engine.info
                this = f"{info.backend}, {info.precision}" if info.backend == "transformers" else info.backend
                why = f" (precision comparisons need a float32 transformers model; this one is {this})"
            raise BadInput(f"comparison {against!r} is not available here{why}: use one of {', '.join(self.choices())}")
        from .engines import load_engine

        with self._lock:
            if against not in self._loaded:
                if against == "another model":
                    engine = load_engine("transformers", self.other, device="cpu")
                else:
                    engine = load_engine("transformers", self.main.engine.info.source, device="cpu", precision=against)
                self._loaded[against] = Service(engine, max_batch=4, max_pending=16)
            service = self._loaded[against]
        label = service.info.name if against == "another model" else f"{service.info.name} ({against})"
        return Side(service, label)


def conversation(system: str, prompt: str) -> list[Message]:
    """The context a reply is scored after: an optional system prompt and an optional user message."""
    return ([Message("system", system)] if system.strip() else []) + ([Message("user", prompt)] if prompt.strip()
                                                                        else [])


def compare_text(variants: Variants, text: str, against: str, prompt: str = "", system_a: str = "",
                 system_b: str = "", top_k: int = 5, conversation_b: Sequence[Message] = (),
                 steps: bool = True) -> Comparison:
    """Score `text` as the reply to A's context (system prompt A, then `prompt`, either optional)
    and to B's: another system prompt, another conversation (`conversation_b`, the messages the
    reply follows), or the same context on another precision or model; align the two on the text.
    steps: also the per-step divergence where both sides share a tokenizer (two more passes)."""
    settings = Settings(max_new_tokens=1, top_k=top_k)
    if not text.strip():
        raise BadInput("empty text: paste some text to compare")
    if against == SYSTEM and system_a.strip() == system_b.strip():
        raise BadInput("give side B a different system prompt than side A")
    if against == CONVERSATION and not conversation_b:
        raise BadInput('give side B a conversation: JSON [{"role", "content"}, ...] that the text replies to')
    side = variants.side(against)  # may load a model: after the cheap checks
    context_a = conversation(system_a, prompt)
    context_b = {SYSTEM: conversation(system_b, prompt), CONVERSATION: list(conversation_b)}.get(against, context_a)
    a = variants.main.score_text(text, settings, messages=context_a)
    b = side.service.score_text(text, settings, messages=context_b)
    if against in (SYSTEM, CONVERSATION):
        what = "system prompt" if against == SYSTEM else "conversation"
        cmp = compare(a, b, f"{what} A", f"{what} B")
    else:
        cmp = compare(a, b, variants.main.info.name, side.label)
    if not steps:
        return replace(cmp, no_divergence="per-step divergence not asked for")
    found, why = divergence(variants.main, a, side.service, b, top_k)
    return replace(cmp, divergence=found, no_divergence=why)
