"""Byte-faithful token texts, incrementally: each pushed id gets its share of the decoded text.

Incremental: a step decodes a short window starting a few tokens back, on a boundary where text was
emitted (never inside a character), so it costs O(window), not O(reply); the window's context keeps
SentencePiece's dropped leading space alike in both decodes.
Byte-faithful: a token that ends inside a multi-byte character gets text "" and the one completing it
carries it whole, `joined` counting the tokens before it; the non-special texts join exactly to
decode(non-special ids), so no U+FFFD appears that the reply itself does not contain.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from .types import ScoredToken

Decode = Callable[[Sequence[int]], str]
IsSpecial = Callable[[int], bool]

WINDOW = 4  # at least this many tokens of already emitted text are decoded again, for context
MAX_PENDING = 8  # a "character" longer than this many tokens is not a character: emit as is
REPLACEMENT = "\ufffd"


class Detokenizer:
    """Push ids one at a time; `push` -> that token's (text, joined), `finish` -> every token's.
    Example: [d.push(i) for i in ids_of("你")] -> [("", 0), ("你", 1)] (a 2-token character)"""

    def __init__(self, decode: Decode, is_special: IsSpecial) -> None:
        self.decode = decode
        self.is_special = is_special
        self.ids: list[int] = []  # every pushed id
        self.out: list[tuple[str, int]] = []  # per pushed id: (text, joined)
        self._plain: list[int] = []  # non-special ids so far
        self._n_done = 0  # plain ids whose text has been emitted
        self._bounds: deque[int] = deque([0], maxlen=WINDOW + 1)  # recent values of _n_done
        self.text = ""  # the non-special text emitted so far (a character being completed is not in it)
        self._pending = 0  # plain tokens since _n_done (inside a character)
        self._last_pending = -1  # index in `out` of the latest pending token

    def push(self, tok: int) -> tuple[str, int]:
        self.ids.append(tok)
        if self.is_special(tok):
            self.out.append((self.decode([tok]), 0))
            return self.out[-1]
        self._plain.append(tok)
        start = max((b for b in self._bounds if b <= self._n_done - WINDOW), default=self._bounds[0])
        base = self.decode(self._plain[start : self._n_done]) if start < self._n_done else ""
        window = self.decode(self._plain[start:])
        # Inside a character: hold the token. (A byte-fallback decoder turns a whole run of byte
        # tokens into U+FFFDs while its last character is incomplete, so the window may not even
        # start with `base` yet.)
        if window.endswith(REPLACEMENT) and self._pending < MAX_PENDING:
            self.out.append(("", 0))
            self._pending += 1
            self._last_pending = len(self.out) - 1
            return self.out[-1]
        piece = window[len(base) :] if window.startswith(base) else self.decode(self._plain)[len(self.text) :]
        self.out.append((piece, self._pending))
        self.text += piece
        self._n_done = len(self._plain)
        self._bounds.append(self._n_done)
        self._pending = 0
        return self.out[-1]

    def finish(self) -> list[tuple[str, int]]:
        """Every token's (text, joined): a cut character's U+FFFD on its last token; a tokenizer whose
        windows do not compose redone exactly (O(n^2), never seen so far)."""
        out = list(self.out)
        full = self.decode(self._plain)
        tail = ""
        if self._pending:
            tail = full[len(self.text) :]
            out[self._last_pending] = (tail, self._pending - 1)
        if self.text + tail == full:
            return out
        return _exact(self.ids, self.decode, self.is_special)


def _exact(ids: Sequence[int], decode: Decode, is_special: IsSpecial) -> list[tuple[str, int]]:
    """The same shares from a full decode at every step: for tokenizers whose windows do not compose."""
    out: list[tuple[str, int]] = []
    plain: list[int] = []
    emitted, pending, last_pending = "", 0, -1
    for tok in ids:
        if is_special(tok):
            out.append((decode([tok]), 0))
            continue
        plain.append(tok)
        full = decode(plain)
        if full.endswith(REPLACEMENT) and pending < MAX_PENDING:
            out.append(("", 0))
            pending, last_pending = pending + 1, len(out) - 1
            continue
        out.append((full[len(emitted) :] if full.startswith(emitted) else full, pending))
        emitted, pending = full, 0
    if pending:
        out[last_pending] = (decode(plain)[len(emitted) :], pending - 1)
    return out


def token_texts(ids: Sequence[int], decode: Decode, is_special: IsSpecial) -> list[tuple[str, int]]:
    """Each token's share of the decoded text, as (text, joined)."""
    d = Detokenizer(decode, is_special)
    for tok in ids:
        d.push(int(tok))
    return d.finish()


def units(tokens: Sequence[ScoredToken]) -> list[tuple[int, int]]:
    """(start, stop) runs drawn as one element: a split character's tokens, else one token each.
    Example: units([<"">, <"你", joined=1>, <"!">]) -> [(0, 2), (2, 3)]"""
    runs, i, n = [], 0, len(tokens)
    while i < n:
        j = i
        while j < n and tokens[j].text == "" and not tokens[j].special:
            j += 1
        if i < j < n and tokens[j].joined == j - i:
            runs.append((i, j + 1))
            i = j + 1
        else:
            runs.append((i, i + 1))
            i += 1
    return runs
