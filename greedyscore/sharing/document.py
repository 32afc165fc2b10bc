"""A shared result as data (pure): what makes it reproducible (messages, token ids and scores, settings,
the model's identity, the time; nothing about the visitor), read back, and compared with a re-run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from ..conversation import ORIGINAL, Conversation, Turn
from ..errors import BadInput
from ..requests import check_settings, parse_messages
from ..text_input import check_tree
from ..types import MAX_TOP_K, Message, ModelIdentity, ScoredReply, Settings
from .reply_json import MAX_ID, reply_from_json

FORMAT = 1  # the document's version; a newer one is refused with a message
KINDS = ("chat", "text")  # a chat turn (maybe a fork of it), or teacher-forced text (Score text)
SHOWN_DIFFERENCES = 8
# What a shared page draws, bounded so that it opens quickly (benchmarks/bench_share_page.py): cells (a
# scored token, or one alternative in its tooltip: a longest reply at any top-k) and message characters.
MAX_SHARED_CELLS = 24_000
MAX_SHARED_CHARS = 100_000


@dataclass(frozen=True)
class SharedItem:
    """chat: `conversation` holds the turns up to the shared one, which is selected (a fork of it
    shown when a fork was shared); `reply` is that path. text: `reply` is the scored text.
    `messages` is what the reply answered (text: the prompt it was scored after, or none)."""

    kind: str
    reply: ScoredReply
    messages: tuple[Message, ...]
    settings: Settings
    model: ModelIdentity
    created: float
    conversation: Conversation | None = None

    def __post_init__(self) -> None:
        """Refuse what its page could not show quickly (a share being made, or read from a store)."""
        drawn = self.drawn
        cells = sum(len(t.top) + 1 for r in drawn for t in r.tokens)
        if cells > MAX_SHARED_CELLS:
            n = sum(len(r.tokens) for r in drawn)
            raise BadInput(f"this result shows {n:,} scored tokens with {cells - n:,} alternatives, more than the "
                           f"{MAX_SHARED_CELLS:,} (tokens and alternatives) a shared page shows without making its "
                           "visitors wait: share a shorter reply, or one scored with a smaller top-k")
        chars = self.n_chars
        if chars > MAX_SHARED_CHARS:
            raise BadInput(f"this result's messages hold {chars:,} characters, more than the {MAX_SHARED_CHARS:,} a "
                           "shared page shows: share a shorter conversation")

    @property
    def n_chars(self) -> int:
        """Characters of the messages and of the turns' user texts (a visitor's page draws them)."""
        users = sum(len(t.user) for t in self.conversation.turns) if self.conversation is not None else 0
        return users + sum(len(m.content) for m in self.messages)

    @property
    def drawn(self) -> list[ScoredReply]:
        """The replies its page draws: every turn's, and the shared fork beside its parent."""
        conv = self.conversation
        if conv is None:
            return [self.reply]
        fork = [self.reply] if conv.shown != ORIGINAL else []
        return fork + [t.reply for t in conv.turns if t.reply is not None]

    @property
    def context(self) -> tuple[Message, ...]:
        """Messages before the shown conversation's turns (a system prompt, turns shared via the API)."""
        if self.conversation is None:
            return self.messages
        covered = 2 * len(self.conversation.turns) - 1
        return self.messages[: max(0, len(self.messages) - covered)]

    @property
    def path(self) -> tuple[int, int]:
        """(turn, node) of the shared reply in the conversation."""
        conv = self.conversation
        return (conv.selected or 0, conv.shown) if conv is not None else (0, ORIGINAL)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT, "kind": self.kind, "created": self.created, "model": self.model.to_json(),
            "settings": asdict(self.settings), "messages": [asdict(m) for m in self.messages],
        }
        if self.conversation is None:
            data["reply"] = self.reply.to_json()
        else:  # the reply is inside the conversation: stored once
            conv = self.conversation
            data["conversation"] = {"turns": [t.to_json() for t in conv.turns], "selected": conv.selected,
                                    "shown": conv.shown}
        return data

    @staticmethod
    def from_json(d: Any) -> SharedItem:
        """The inverse of `to_json`; BadInput (a page message) for anything else, non-text strings included."""
        check_tree(d, "this shared result")
        if not isinstance(d, dict) or d.get("kind") not in KINDS:
            raise BadInput("this is not a greedyscore shared result")
        if not isinstance(d.get("format"), int) or d["format"] > FORMAT:
            raise BadInput("this shared result was made by a newer greedyscore: upgrade to open it")
        conversation = None
        if d["kind"] == "chat":
            c = d.get("conversation") or {}
            conversation = Conversation.from_json(c.get("turns"), c.get("selected"), c.get("shown", ORIGINAL))
            turn = conversation.current
            assert turn is not None  # from_json checked the selected turn
            reply = turn.path(conversation.shown)
        else:
            reply = reply_from_json(d.get("reply"))
        return SharedItem(d["kind"], reply, _messages(d.get("messages")), _settings(d.get("settings")),
                          _identity(d.get("model")), _number(d.get("created")), conversation)


def settings_of(reply: ScoredReply) -> Settings:
    """The settings that reproduce a reply: as many new tokens as it generated, its top-k."""
    generated = len(reply.tokens) - (reply.forked_at + 1 if reply.forked_at is not None else 0)
    top_k = max((len(t.top) for t in reply.tokens), default=1)
    return Settings(max(1, generated), max(1, min(MAX_TOP_K, top_k)), reply.verified)


def share_turn(conv: Conversation, turn: int, node: int, model: ModelIdentity, now: float) -> SharedItem:
    """One assistant turn (node: ORIGINAL, or a fork of it) with the conversation that led to it."""
    try:
        reply = conv.turns[turn].path(node)
    except (IndexError, KeyError) as ex:
        raise BadInput("that reply is no longer in this conversation") from ex
    settings = settings_of(reply)
    kept = Conversation(conv.turns[: turn + 1])
    kept = kept.show(turn, node) if node != ORIGINAL else kept.select(turn)
    return SharedItem("chat", reply, tuple(conv.messages(turn)), settings, model, now, kept)


def share_text(reply: ScoredReply, messages: tuple[Message, ...], model: ModelIdentity, now: float) -> SharedItem:
    """A Score-text result (messages: what it was scored after, if anything)."""
    return SharedItem("text", reply, messages, settings_of(reply), model, now)


def share_reply(kind: str, reply: ScoredReply, messages: tuple[Message, ...], settings: Settings,
                model: ModelIdentity, now: float) -> SharedItem:
    """One reply with the messages it answered (kind "chat": shown as a one-turn conversation) or
    was scored after (kind "text")."""
    if kind == "text":
        return SharedItem("text", reply, messages, settings, model, now)
    user = messages[-1].content if messages and messages[-1].role == "user" else ""
    conv = Conversation((Turn(user, reply),)).select(0)
    return SharedItem("chat", reply, messages, settings, model, now, conv)


def share_reply_json(data: Any, model: ModelIdentity, now: float) -> SharedItem:
    """The tokens JSON that /chat or /score_text returned. From a client: its weights are unknown (Re-run
    checks), so of `model` only the greedyscore version is kept."""
    check_tree(data, "the tokens JSON")
    reply = reply_from_json(data)
    messages = _messages(data.get("messages"))
    settings = _settings(data["settings"]) if data.get("settings") else settings_of(reply)
    claimed = ModelIdentity(reply.model, reply.backend, None, reply.score_source, model.greedyscore)
    kind = data.get("kind", "chat" if reply.calibration is None else "text")
    return share_reply("text" if kind == "text" else "chat", reply, messages, settings, claimed, now)


def _messages(raw: Any) -> tuple[Message, ...]:
    return tuple(parse_messages(raw)) if raw else ()


def _settings(d: Any) -> Settings:
    if not isinstance(d, dict):
        raise BadInput("this shared result has no settings")
    fields = {k: d[k] for k in ("max_new_tokens", "top_k", "verify", "tolerance") if k in d}
    try:
        settings = Settings(**fields)
    except TypeError as ex:
        raise BadInput("this shared result's settings are not valid") from ex
    check_settings(settings)
    if settings.max_new_tokens > MAX_ID:
        raise BadInput(f"this shared result's max_new_tokens is beyond {MAX_ID:,}")
    return settings


def _identity(d: Any) -> ModelIdentity:
    keys = ("name", "backend", "weights", "score_source", "greedyscore")
    if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in keys if k != "weights"):
        raise BadInput("this shared result does not say which model made it")
    if d.get("weights") is not None and not isinstance(d["weights"], str):
        raise BadInput("this shared result's model identity is not valid")
    return ModelIdentity(*(d.get(k) for k in keys))


def _number(v: Any) -> float:
    """A time: seconds since 1970, before the year 5000."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 9.5e10:
        raise BadInput("this shared result has no valid time")
    return float(v)


# --- re-running ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RerunPlan:
    """What to run again: greedy from `prompt` (+ a fork's `forced` prefix), or `prompt` -> `target`."""

    prompt: tuple[int, ...]
    settings: Settings
    forced: tuple[int, ...] = ()
    forked_at: int | None = None
    target: tuple[int, ...] = ()


def rerun_plan(item: SharedItem) -> RerunPlan:
    reply = item.reply
    ids = tuple(t.id for t in reply.tokens)
    settings = replace(item.settings, verify=False)  # the comparison is the check
    if item.kind == "text":
        return RerunPlan(reply.prompt_token_ids, settings, target=ids)
    if reply.finish_reason == "step":  # a path paused by hand: its tokens scored again, as they were
        return RerunPlan(reply.prompt_token_ids, settings, target=ids)
    forced = ids[: reply.forked_at + 1] if reply.forked_at is not None else ()
    if reply.chosen:  # built by hand, then finished greedily: the picks forced, greedy after the last
        forced = ids[: max(reply.chosen) + 1]
    if reply.finish_reason == "abort":  # stopped: as many new tokens as it had
        settings = replace(settings, max_new_tokens=max(1, len(ids) - len(forced)))
    return RerunPlan(reply.prompt_token_ids, settings, forced, reply.forked_at)


@dataclass(frozen=True)
class Difference:
    at: int
    stored: str  # token texts as stored and as generated now
    now: str


@dataclass(frozen=True)
class Reproduction:
    """A stored reply beside the one a re-run gave, token by token."""

    same_prompt: bool
    same_ids: bool
    messages_match: bool | None  # the stored prompt ids are what this server makes of the stored messages
    n_stored: int
    n_now: int
    first_difference: int | None  # the first position whose token differs (or where one reply ends)
    differences: tuple[Difference, ...]  # the first few positions that differ
    max_dp: float  # max |p_stored - p_now| of the chosen tokens before the first difference
    at_max: int | None
    tolerance: float

    @property
    def reproduced(self) -> bool:
        return self.same_prompt and self.same_ids and self.max_dp <= self.tolerance and self.n_stored > 0

    @property
    def verdict(self) -> str:
        if not self.same_prompt:
            return "not reproduced: the prompt became other token ids here (another tokenizer or template)"
        if self.n_stored == 0:
            return "nothing to compare: the shared reply was stopped before its first token"
        if self.reproduced and self.messages_match is False:
            return ("reproduced from the stored prompt ids, but they are not what this server makes of the messages "
                    "shown")
        if self.reproduced:
            return "reproduced"
        if self.same_ids:
            return f"same tokens, but probabilities differ by up to {self.max_dp:.2g} (more than {self.tolerance:g})"
        return f"not reproduced: the reply differs from token {self.first_difference}"


def reproduction(stored: ScoredReply, now: ScoredReply, tolerance: float,
                 messages_match: bool | None = None) -> Reproduction:
    """Ids, and probabilities while both took the same path; tolerance: the server's, not the document's."""
    a, b = stored.tokens, now.tokens
    if stored.finish_reason == "abort":  # stopped by its visitor: only as far as it went
        b = b[: len(a)]
    n = min(len(a), len(b))
    first = next((i for i in range(n) if a[i].id != b[i].id), None)
    if first is None and len(a) != len(b):
        first = n
    same = first is None
    upto = n if first is None else first
    deltas = [abs(a[i].prob - b[i].prob) for i in range(upto)]
    at_max = max(range(upto), key=deltas.__getitem__) if deltas else None
    diffs = tuple(Difference(i, a[i].text if i < len(a) else "(end)", b[i].text if i < len(b) else "(end)")
                  for i in range(first or 0, max(len(a), len(b))) if not same
                  and (i >= n or a[i].id != b[i].id))[:SHOWN_DIFFERENCES]
    return Reproduction(tuple(stored.prompt_token_ids) == tuple(now.prompt_token_ids), same, messages_match, len(a),
                        len(b), first, diffs, max(deltas, default=0.0), at_max, tolerance)
