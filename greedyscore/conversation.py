"""A visitor's conversation as data: the turns, their scored replies and each reply's fork tree. Pure
and immutable (each change returns a new Conversation): the UI keeps one per session in `gr.State`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .errors import BadInput
from .sharing.reply_json import MAX_ID, reply_from_json
from .types import Message, ScoredReply

ORIGINAL = 0  # the node id of a turn's own reply in its fork tree


@dataclass(frozen=True)
class ForkNode:
    """The reply had the model taken `token_id` at `at` in the path `parent` (ORIGINAL or a fork)."""

    id: int
    parent: int
    at: int
    token_id: int
    reply: ScoredReply


@dataclass(frozen=True)
class Turn:
    user: str
    reply: ScoredReply | None = None  # None while it is being generated (or if it never finished)
    forks: tuple[ForkNode, ...] = ()

    def path(self, node: int) -> ScoredReply:
        """The reply of a node of this turn's tree (ORIGINAL: the turn's own reply)."""
        if node == ORIGINAL and self.reply is not None:
            return self.reply
        for f in self.forks:
            if f.id == node:
                return f.reply
        raise KeyError(f"no path {node} in this turn")

    def fork(self, node: int) -> ForkNode:
        return next(f for f in self.forks if f.id == node)

    def children(self, node: int) -> list[ForkNode]:
        return [f for f in self.forks if f.parent == node]

    def find(self, parent: int, at: int, token_id: int) -> ForkNode | None:
        """The fork already computed for this choice, if any."""
        return next((f for f in self.forks if (f.parent, f.at, f.token_id) == (parent, at, token_id)), None)

    def to_json(self) -> dict[str, Any]:
        """The turn's reply in the CLI schema, with its fork tree (each fork: parent, at, token_id, reply)."""
        if self.reply is None:
            return {"user": self.user, "reply": None, "forks": []}
        return {"user": self.user, **self.reply.to_json(),
                "forks": [{"id": f.id, "parent": f.parent, "at": f.at, "token_id": f.token_id, **f.reply.to_json()}
                          for f in self.forks]}

    @staticmethod
    def from_json(d: Any) -> Turn:
        """The inverse of `to_json` (a shared conversation); BadInput for anything malformed."""
        if not isinstance(d, dict) or not isinstance(d.get("user"), str):
            raise BadInput("not a greedyscore conversation: a turn needs its \"user\" text")
        if d.get("reply", True) is None:
            return Turn(d["user"])
        own = reply_from_json(d)
        paths: dict[int, ScoredReply] = {ORIGINAL: own}
        forks = []
        raw = d.get("forks") or []
        if not isinstance(raw, list):
            raise BadInput("not a greedyscore conversation: a turn's forks must be a list")
        for f in raw:
            ids = [f.get(k) if isinstance(f, dict) else None for k in ("id", "parent", "at", "token_id")]
            if (not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_ID for x in ids)
                    or ids[1] not in paths or ids[0] in paths):
                raise BadInput("not a greedyscore conversation: a fork needs a new id, parent (an earlier path), at "
                               "and token_id")
            reply = reply_from_json(f)
            if reply.forked_at != ids[2] or ids[2] >= min(len(reply.tokens), len(paths[ids[1]].tokens)):
                raise BadInput("not a greedyscore conversation: a fork's position is not in its paths")
            forks.append(ForkNode(ids[0], ids[1], ids[2], ids[3], reply))
            paths[ids[0]] = reply
        return Turn(d["user"], own, tuple(forks))


@dataclass(frozen=True)
class Conversation:
    turns: tuple[Turn, ...] = ()
    selected: int | None = None  # the turn whose chart, stats and export are shown
    shown: int = ORIGINAL  # in the selected turn: the fork shown beside its parent (ORIGINAL: none)

    def messages(self, turn: int | None = None) -> list[Message]:
        """The messages that produced `turn` (None: a new turn after all), turns without a reply left out."""
        end = len(self.turns) if turn is None else turn
        out: list[Message] = []
        for t in self.turns[:end]:
            if t.reply is not None:
                out += [Message("user", t.user), Message("assistant", t.reply.text)]
        if turn is not None:
            out.append(Message("user", self.turns[turn].user))
        return out

    def ask(self, user: str) -> Conversation:
        return replace(self, turns=(*self.turns, Turn(user)))

    def retract(self) -> Conversation:
        """Drop the last turn if it never got a reply (its generation failed)."""
        if self.turns and self.turns[-1].reply is None:
            return replace(self, turns=self.turns[:-1])
        return self

    def answer(self, reply: ScoredReply) -> Conversation:
        """The last turn's reply; it becomes the selected turn."""
        last = replace(self.turns[-1], reply=reply)
        return Conversation((*self.turns[:-1], last), len(self.turns) - 1, ORIGINAL)

    def select(self, turn: int) -> Conversation:
        if not (0 <= turn < len(self.turns) and self.turns[turn].reply is not None):
            raise KeyError(f"no reply at turn {turn}")
        return replace(self, selected=turn, shown=ORIGINAL)

    def show(self, turn: int, node: int) -> Conversation:
        self.turns[turn].path(node)  # raises for an unknown node
        return replace(self, selected=turn, shown=node)

    def add_fork(self, turn: int, parent: int, at: int, token_id: int, reply: ScoredReply) -> Conversation:
        """Add the fork to the turn's tree (or reuse the same one) and show it."""
        t = self.turns[turn]
        node = t.find(parent, at, token_id)
        if node is None:
            node = ForkNode(1 + max((f.id for f in t.forks), default=0), parent, at, token_id, reply)
            t = replace(t, forks=(*t.forks, node))
        turns = (*self.turns[:turn], t, *self.turns[turn + 1 :])
        return Conversation(turns, turn, node.id)

    @staticmethod
    def from_json(turns: Any, selected: Any = None, shown: Any = ORIGINAL) -> Conversation:
        """Turns as `Turn.to_json` gives them; the selected turn and shown fork checked against them."""
        if not isinstance(turns, list) or not turns:
            raise BadInput("not a greedyscore conversation: it has no turns")
        conv = Conversation(tuple(Turn.from_json(t) for t in turns))
        if selected is None:
            return conv
        if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_ID for x in (selected, shown)):
            raise BadInput("not a greedyscore conversation: the shared turn is not in it")
        try:
            return conv.show(selected, shown) if shown != ORIGINAL else conv.select(selected)
        except (KeyError, IndexError, TypeError) as ex:
            raise BadInput("not a greedyscore conversation: the shared turn is not in it") from ex

    @property
    def current(self) -> Turn | None:
        return self.turns[self.selected] if self.selected is not None else None
