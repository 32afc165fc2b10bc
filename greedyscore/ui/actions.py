"""The UI's one door to the model: every request the tabs and the API make, built from raw page and
API values (`greedyscore.requests`) and run by `Service.run`."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from .. import steer
from ..align import Comparison
from ..guess import Game, choices, new_game, play, score_guess
from ..requests import (
    Chat,
    Fork,
    Rerun,
    ScoreConversation,
    ScoreIds,
    ScoreText,
    Step,
    parse_messages,
    parse_messages_json,
    parse_sampler,
    parse_settings,
    whole_number,
)
from ..service import Service, continuation_score, guess_ids, last, prompt_matches
from ..sharing.document import Reproduction, SharedItem, reproduction, rerun_plan
from ..types import Message, Sampler, ScoredReply, Settings, Stepped, TextDelta
from ..variants import Variants, compare_text

# besides the actions
__all__ = ["parse_messages", "parse_messages_json", "parse_sampler", "parse_settings", "whole_number"]
Events = Iterator[TextDelta | ScoredReply]
GAME_TOP_K = 20  # kept per position up front: a one-token guess among them costs no model call


def about(service: Service) -> tuple[str, str, str, Any]:
    """-> (model name, backend, where the scores come from, drift or None) for the page's header."""
    info = service.info
    return info.name, info.backend, info.score_source, info.drift


def identity(service: Service) -> Any:
    return service.identity


def token_text(service: Service, token_id: int) -> str:
    return service.tokenizer.display(token_id)


def chat(service: Service, messages: Sequence[Message], settings: Settings) -> ScoredReply:
    return last(service.run(Chat(tuple(messages), settings)))


def stream_turn(service: Service, messages: Sequence[Message], settings: Settings, cancel: threading.Event) -> Events:
    return service.run(Chat(tuple(messages), settings), cancel)


def stream_fork(service: Service, messages: Sequence[Message], reply_ids: Sequence[int] | None, at: Any, token: Any,
                settings: Settings, cancel: threading.Event | None = None) -> Events:
    """Checks `at` and `token` before it returns; no reply ids: a fresh greedy reply is forked."""
    return service.run(Fork(tuple(messages), reply_ids, at, token, settings), cancel)


def fork(service: Service, messages: Sequence[Message], reply_ids: Any, at: Any, token: Any,
         settings: Settings) -> ScoredReply:
    return last(stream_fork(service, messages, reply_ids, at, token, settings))


def score(service: Service, text: str, prompt: str, top_k: Any,
          conversation: bool = False) -> tuple[ScoredReply, tuple[Message, ...]]:
    """Teacher-forced text after an optional user prompt, or a JSON conversation -> (the scored
    reply, the messages it was scored after)."""
    settings = parse_settings(1, top_k)
    if conversation:
        return last(service.run(ScoreConversation(tuple(parse_messages_json(text)), settings))), ()
    after = (Message("user", prompt),) if prompt else ()
    return last(service.run(ScoreText(text or "", after, settings))), after


def compare(variants: Variants, text: str, prompt: str, against: str, system_a: str, system_b: str,
            top_k: Any = Settings().top_k, conversation_b: Sequence[Message] = ()) -> Comparison:
    return compare_text(variants, text or "", against, prompt or "", system_a or "", system_b or "",
                        parse_settings(1, top_k).top_k, conversation_b)


def start_game(service: Service, text: str, pick: int) -> Game:
    scored = last(service.run(ScoreText(text or "", (), Settings(top_k=GAME_TOP_K))))
    return new_game(scored, service.info.vocab_size, pick)


def guess(service: Service, game: Game, said: str) -> Game:
    context = game.context_ids()
    form, ids, logprob, rank = score_guess(game, said, lambda text: guess_ids(service, text),
                                           lambda ids: continuation_score(service, context, ids))
    return play(game, form, ids, logprob, rank, choices(game) if game.pick else ())


def reproduce(service: Service, item: SharedItem) -> Reproduction:
    """Run a shared result again on this server's model and compare."""
    plan = rerun_plan(item)
    if plan.target:  # a scored text, or a path paused by hand
        request = ScoreIds(plan.prompt, plan.target, plan.settings)
    else:
        request = Rerun(plan.prompt, plan.settings, plan.forced, plan.forked_at, item.messages)
    matches = prompt_matches(service, item.messages, item.reply.prompt_token_ids)
    return reproduction(item.reply, last(service.run(request)), Settings().tolerance, matches)


def step(service: Service, messages: Sequence[Message], prefix: Any, chosen: Any, sampler: Sampler,
         settings: Settings, force_id: Any = None, force_text: str = "") -> Stepped:
    """One step of a path the visitor builds (`steer`), checked from raw page or API values."""
    return steer.step(service, Step(tuple(messages), prefix, chosen, force_id, force_text or "", sampler, settings))


def relook(service: Service, stepped: Stepped, sampler: Sampler) -> Stepped:
    """The same step through another sampler, from the row it kept: no model call."""
    return steer.relook(service, stepped, sampler)


def finish_path(service: Service, messages: Sequence[Message], prefix: Any, chosen: Any, settings: Settings,
                cancel: threading.Event | None = None) -> Events:
    """Greedy from the end of a stepped path, streamed."""
    return steer.finish(service, Step(tuple(messages), prefix, chosen, settings=settings), cancel)


def lens(service: Service, stepped: Stepped, sampler: Sampler) -> tuple[list[float], bool]:
    """p(sampling picks greedy's token) along a path, and whether the kept top-k alone gave it."""
    return steer.p_greedy_along(service, stepped.path.prompt_token_ids, stepped.path, sampler)
