"""Second configurations to score the same text under (the Compare tab): the same model in
bfloat16 or int8, or another model. Each is loaded on first use, once, as its own Service."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .align import Comparison, compare
from .errors import BadInput, EngineUnavailable
from .service import Service
from .types import Message, Settings

SYSTEM = "another system prompt"
AGAINST = (SYSTEM, "bfloat16", "int8", "another model")


@dataclass(frozen=True)
class Side:
    service: Service
    label: str


class Variants:
    """`model` is what the main engine loaded (None = the embedded model); `other` is --compare-model."""

    def __init__(self, main: Service, model: str | None = None, other: str | None = None) -> None:
        self.main = main
        self.model = model
        self.other = other
        self._loaded: dict[str, Service] = {}
        self._lock = threading.Lock()

    def choices(self) -> tuple[str, ...]:
        return AGAINST if self.other else AGAINST[:-1]

    def side(self, against: str) -> Side:
        """The Service that scores side B, loaded now if it is the first use."""
        if against == SYSTEM:
            return Side(self.main, self.main.model_name)
        if against not in self.choices():
            extra = "" if self.other else " (start the app with --compare-model M for another model)"
            raise BadInput(f"unknown comparison {against!r}: use one of {', '.join(self.choices())}{extra}")
        from .engines.transformers import TransformersEngine

        with self._lock:
            if against not in self._loaded:
                if against == "another model":
                    engine = TransformersEngine.load(self.other, device="cpu")
                else:
                    if self.main.backend == "openai":
                        raise EngineUnavailable("precision comparisons load the model in this process; with a "
                                                "remote server, compare system prompts, or run the app locally")
                    engine = TransformersEngine.load(self.model, device="cpu", precision=against)
                self._loaded[against] = Service(engine, max_batch=4, max_pending=16)
            service = self._loaded[against]
        label = service.model_name if against == "another model" else f"{service.model_name} ({against})"
        return Side(service, label)


def conversation(system: str, prompt: str) -> list[Message]:
    """The context a reply is scored after: an optional system prompt and an optional user message."""
    return ([Message("system", system)] if system.strip() else []) + ([Message("user", prompt)] if prompt.strip()
                                                                        else [])


def compare_text(variants: Variants, text: str, against: str, prompt: str = "", system_a: str = "",
                 system_b: str = "", top_k: int = 5) -> Comparison:
    """Score `text` (as the reply to `prompt`, if any) under side A (the main model, system prompt A)
    and side B (`against`), then align the two on the text."""
    settings = Settings(max_new_tokens=1, top_k=top_k)
    side = variants.side(against)
    if against == SYSTEM and system_a.strip() == system_b.strip():
        raise BadInput("give side B a different system prompt than side A")
    a = variants.main.score_reply(conversation(system_a, prompt), text, settings)
    b = side.service.score_reply(conversation(system_b if against == SYSTEM else system_a, prompt), text, settings)
    if against == SYSTEM:
        return compare(a, b, "system prompt A", "system prompt B")
    return compare(a, b, variants.main.model_name, side.label)
