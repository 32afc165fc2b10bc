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


def load_service(model: str | None = None, backend: str = "auto"):
    """Load the engine once and return the Service that scores chats and texts."""
    from .engines import load_engine
    from .service import Service

    return Service(load_engine(backend, model))
