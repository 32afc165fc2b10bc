"""greedyscore: greedy replies with every token's true model probability.

Example:
    from greedyscore import Message, load_service
    reply = load_service().chat([Message("user", "Hi!")])
    [(t.text, t.prob) for t in reply.tokens]
"""

from __future__ import annotations

from .types import Alternative, Message, ReplyStats, ScoredReply, ScoredToken, Settings, TextDelta, Timings

__all__ = [
    "Alternative", "Message", "ReplyStats", "ScoredReply", "ScoredToken", "Settings", "TextDelta", "Timings",
    "load_service",
]
__version__ = "0.1.0"


def load_service(model: str | None = None, backend: str = "auto", **options):
    """Load the engine once and return the Service that scores chats and texts.

    A remote server: load_service(backend="openai", base_url="http://host:8000") (options: api_key,
    tokenizer, full_vocab)."""
    from .engines import load_engine
    from .service import Service

    return Service(load_engine(backend, model, **options))
