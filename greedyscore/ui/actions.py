"""The UI's one door to the model: every Service call the tabs and the API make, and the parsing of
raw page and API values into its inputs. When the Service takes validated requests
(`service.run(request)`), these functions change and the handlers above them do not."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ..align import Comparison
from ..guess import Game, choices, new_game, play, score_guess
from ..service import Service, parse_messages, parse_messages_json, parse_settings, whole_number
from ..shared import Reproduction, SharedItem, reproduction, rerun_plan
from ..types import Message, ScoredReply, Settings, TextDelta
from ..variants import Variants, compare_text

__all__ = ["parse_messages", "parse_messages_json", "parse_settings", "whole_number"]  # besides the actions
Events = Iterator[TextDelta | ScoredReply]
GAME_TOP_K = 20  # kept per position up front: a one-token guess among them costs no model call


def about(service: Service) -> tuple[str, str, str, Any]:
    """-> (model name, backend, where the scores come from, drift or None) for the page's header."""
    return service.model_name, service.backend, service.score_source, service.drift


def identity(service: Service) -> Any:
    return service.identity


def token_text(service: Service, token_id: int) -> str:
    return service.token_text(token_id)


def chat(service: Service, messages: Sequence[Message], settings: Settings) -> ScoredReply:
    return service.chat(messages, settings)


def stream_turn(service: Service, messages: Sequence[Message], settings: Settings, cancel: threading.Event) -> Events:
    return service.stream(messages, settings, cancel=cancel)


def stream_fork(service: Service, messages: Sequence[Message], reply_ids: Sequence[int], at: Any, token: Any,
                settings: Settings, cancel: threading.Event) -> Events:
    """Checks `at` and `token` before it returns."""
    return service.stream_fork(messages, reply_ids, at, token, settings, cancel=cancel)


def fork(service: Service, messages: Sequence[Message], reply_ids: Any, at: Any, token: Any,
         settings: Settings) -> ScoredReply:
    """The reply had the model taken `token` at `at`; no reply ids: a fresh greedy reply is forked."""
    if not reply_ids:
        reply_ids = [t.id for t in service.chat(messages, settings).tokens]
    return service.fork(messages, reply_ids, at, token, settings)


def score(service: Service, text: str, prompt: str, top_k: Any,
          conversation: bool = False) -> tuple[ScoredReply, tuple[Message, ...]]:
    """Teacher-forced text after an optional user prompt, or a JSON conversation -> (the scored
    reply, the messages it was scored after)."""
    settings = parse_settings(1, top_k)
    if conversation:
        return service.score_messages(parse_messages_json(text), settings), ()
    reply = service.score_text(text or "", settings, prompt=prompt or None)
    return reply, ((Message("user", prompt),) if prompt else ())


def compare(variants: Variants, text: str, prompt: str, against: str, system_a: str, system_b: str,
            top_k: Any = Settings().top_k, conversation_b: Sequence[Message] = ()) -> Comparison:
    return compare_text(variants, text or "", against, prompt or "", system_a or "", system_b or "",
                        parse_settings(1, top_k).top_k, conversation_b)


def start_game(service: Service, text: str, pick: int) -> Game:
    scored = service.score_text(text or "", Settings(top_k=GAME_TOP_K))
    return new_game(scored, service.engine.vocab_size, pick)


def guess(service: Service, game: Game, said: str) -> Game:
    context = game.context_ids()
    form, ids, logprob, rank = score_guess(game, said, service.guess_ids,
                                           lambda ids: service.score_continuation(context, ids))
    return play(game, form, ids, logprob, rank, choices(game) if game.pick else ())


def reproduce(service: Service, item: SharedItem) -> Reproduction:
    """Run a shared result again on this server's model and compare."""
    plan = rerun_plan(item)
    if item.kind == "text":
        now = service.rescore(plan.prompt, plan.target, plan.settings)
    else:
        now = service.rerun(plan.prompt, plan.settings, plan.forced, plan.forked_at, item.messages)
    matches = service.prompt_matches(item.messages, item.reply.prompt_token_ids)
    return reproduction(item.reply, now, Settings().tolerance, matches)
