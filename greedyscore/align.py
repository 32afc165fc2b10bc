"""Two scorings of the same text, aligned on the text (not on tokens), and compared.

A span ends where *both* sides have a token boundary, so a span's summed logprob on each side is
log p(span | everything before it) by the chain rule: comparable across tokenizers. Tokens that
spell nothing (a split character's bytes, special tokens) count in the span that follows.

With one tokenizer a comparison also carries its per-step divergence (`divergence`): at every
token, how far B's whole next-token distribution is from A's.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import BadInput
from .types import ScoredReply, ScoredToken


@dataclass(frozen=True)
class Span:
    text: str
    start: int  # character offsets into the text
    stop: int
    logprob_a: float
    logprob_b: float
    tokens_a: int
    tokens_b: int

    @property
    def delta(self) -> float:
        """log p_b - log p_a: > 0 where B was surer."""
        return self.logprob_b - self.logprob_a

    @property
    def points(self) -> float:
        """Percentage points of probability, 100 (p_b - p_a)."""
        return 100 * (math.exp(self.logprob_b) - math.exp(self.logprob_a))


@dataclass(frozen=True)
class Step:
    """One position of a same-tokenizer comparison: B's next-token distribution against A's."""

    kl: float  # KL(A || B) in nats, over the whole vocabulary: 0 when B predicts exactly as A
    overlap: float  # |top-k of A & top-k of B| / k
    argmax_a: int  # each side's greedy choice there (argmax of its raw logits)
    argmax_b: int
    shown_a: str  # those choices' display texts
    shown_b: str

    @property
    def greedy_differs(self) -> bool:
        return self.argmax_a != self.argmax_b


@dataclass(frozen=True)
class Divergence:
    """The per-step divergence along the text: one Step per token (the row that predicts it)."""

    steps: tuple[Step, ...]
    k: int  # the top-k of `overlap`
    notes: tuple[str, ...] = ()

    @property
    def mean_kl(self) -> float:
        return math.fsum(s.kl for s in self.steps) / len(self.steps) if self.steps else 0.0

    @property
    def max_at(self) -> int | None:
        """The position of the largest KL (the first of equals), None for no steps."""
        return max(range(len(self.steps)), key=lambda i: self.steps[i].kl) if self.steps else None

    @property
    def differs_at(self) -> list[int]:
        """The positions where the two sides' greedy choices differ."""
        return [i for i, s in enumerate(self.steps) if s.greedy_differs]

    @property
    def mean_overlap(self) -> float:
        return math.fsum(s.overlap for s in self.steps) / len(self.steps) if self.steps else 1.0

    def to_json(self) -> dict:
        at = self.max_at
        return {"steps": [{"kl": s.kl, "overlap": s.overlap, "greedy_differs": s.greedy_differs,
                           "argmax_a": s.argmax_a, "argmax_b": s.argmax_b} for s in self.steps],
                "mean_kl": self.mean_kl, "max_kl": None if at is None else self.steps[at].kl, "max_kl_at": at,
                "greedy_differs_at": self.differs_at, "mean_overlap": self.mean_overlap, "overlap_k": self.k,
                "divergence_notes": list(self.notes)}


NO_STEPS = dict.fromkeys(("steps", "mean_kl", "max_kl", "max_kl_at", "greedy_differs_at", "mean_overlap",
                          "overlap_k"))


@dataclass(frozen=True)
class Comparison:
    label_a: str
    label_b: str
    a: ScoredReply
    b: ScoredReply
    spans: tuple[Span, ...]
    same_tokens: bool  # both sides tokenised the text identically: spans are tokens
    notes: tuple[str, ...] = ()
    divergence: Divergence | None = None  # per step: only where both sides share a tokenizer
    no_divergence: str = ""  # why there is none (another tokenizer, a server engine, not asked)

    def to_json(self) -> dict:
        """Extra keys may be added, none removed. "steps" and the divergence's keys are None where it is
        undefined, and "divergence_note" says why."""
        steps = self.divergence.to_json() if self.divergence is not None else dict(NO_STEPS, divergence_notes=[])
        return {
            "a": self.label_a, "b": self.label_b, "same_tokens": self.same_tokens, "notes": list(self.notes),
            "spans": [{"text": s.text, "start": s.start, "stop": s.stop, "logprob_a": s.logprob_a,
                       "logprob_b": s.logprob_b, "delta": s.delta, "points": s.points, "tokens_a": s.tokens_a,
                       "tokens_b": s.tokens_b} for s in self.spans],
            "total_logprob_a": sum(s.logprob_a for s in self.spans),
            "total_logprob_b": sum(s.logprob_b for s in self.spans),
            **steps, "divergence_note": self.no_divergence,
        }


def _text_and_ends(tokens: Sequence[ScoredToken]) -> tuple[str, list[int]]:
    """The text the tokens spell (special tokens left out) and each token's end offset in it."""
    ends, n, parts = [], 0, []
    for t in tokens:
        if not t.special:
            parts.append(t.text)
            n += len(t.text)
        ends.append(n)
    return "".join(parts), ends


def align(tokens_a: Sequence[ScoredToken], tokens_b: Sequence[ScoredToken]) -> list[Span]:
    """Spans where both tokenisations break; ValueError when the two spell different texts.
    Example: a = ["ab", "c"], b = ["a", "bc"] -> one span "abc" (a: 2 tokens, b: 2 tokens)"""
    text_a, ends_a = _text_and_ends(tokens_a)
    text_b, ends_b = _text_and_ends(tokens_b)
    if text_a != text_b:
        raise ValueError("the two scorings are of different texts")
    cuts = sorted(({e for e in ends_a if e > 0} & {e for e in ends_b if e > 0}) | {len(text_a)})
    sums = [[0.0, 0.0, 0, 0] for _ in cuts]
    for side, (tokens, ends) in enumerate(((tokens_a, ends_a), (tokens_b, ends_b))):
        for t, end in zip(tokens, ends):
            start = end - (0 if t.special else len(t.text))
            # a token that spells nothing belongs with the character that follows it
            i = min(bisect.bisect_right(cuts, start) if start == end else bisect.bisect_left(cuts, end), len(cuts) - 1)
            sums[i][side] += t.logprob
            sums[i][2 + side] += 1
    spans, start = [], 0
    for cut, (la, lb, na, nb) in zip(cuts, sums):
        if cut > start or na or nb:
            spans.append(Span(text_a[start:cut], start, cut, la, lb, na, nb))
        start = cut
    return spans


def _drop_head(tokens: Sequence[ScoredToken], n_chars: int) -> list[ScoredToken]:
    """The tokens after the first n_chars characters (a token straddling the cut is dropped too)."""
    _, ends = _text_and_ends(tokens)
    return [t for t, end in zip(tokens, ends) if end - (0 if t.special else len(t.text)) >= n_chars]


def compare(a: ScoredReply, b: ScoredReply, label_a: str, label_b: str) -> Comparison:
    """The two scorings side by side, aligned on their text; a head only one side scored (a tokenizer
    without BOS takes the first token as context) is left out, with a note."""
    ta, tb = _text_and_ends(a.tokens)[0], _text_and_ends(b.tokens)[0]
    notes: list[str] = []
    tokens_a, tokens_b = list(a.tokens), list(b.tokens)
    if ta != tb:
        longer, shorter = (ta, tb) if len(ta) > len(tb) else (tb, ta)
        if not longer.endswith(shorter) or not shorter:
            raise BadInput("the two sides scored different texts (their tokenizers or templates differ): "
                           "give the text as a reply to a prompt, or compare models with the same tokenizer")
        cut = len(longer) - len(shorter)
        tokens_a, tokens_b = (_drop_head(tokens_a, cut), tokens_b) if len(ta) > len(tb) else \
            (tokens_a, _drop_head(tokens_b, cut))
        notes.append(f"approximate: the first {cut} characters ({longer[:cut]!r}) are a prediction on one side "
                     "only (the other tokenizer has no BOS to predict from) and are left out")
    try:
        spans = align(tokens_a, tokens_b)
    except ValueError as ex:
        raise BadInput("the two sides scored different texts: give the text as a reply to a prompt, or compare "
                       "models with the same tokenizer") from ex
    same = [t.id for t in a.tokens] == [t.id for t in b.tokens]
    if not same:
        notes.append("the two sides split the text into different tokens: compared per span where both break "
                     "(each span's probability is exact on both sides; spans are coarser than tokens)")
    return Comparison(label_a, label_b, a, b, tuple(spans), same, tuple(notes))


def biggest(cmp: Comparison, n: int = 5) -> list[Span]:
    """The spans whose probability changed most (percentage points)."""
    return sorted(cmp.spans, key=lambda s: -abs(s.points))[:n]
