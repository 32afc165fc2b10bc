"""Guess the next token: a learner against the model on a known text, scored teacher-forced once up
front and revealed a unit (a token, or a split character's tokens) at a time (pure game logic).

Score: bits per unit (Shannon's guessing game). A learner gives a guess, not a distribution, so they
are credited with their own hit rate so far (`learner_bits`), the rest spread over the other options:
the vocabulary when typing, or the menu when picking (the model's probabilities renormalised on it).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from .detokenize import units
from .errors import BadInput
from .types import ScoredReply, ScoredToken

LOG2 = math.log(2)
BYTE_TEXT = re.compile(r"^(\\x[0-9a-f]{2})+$")  # a token that is part of a character (Engine.display)


@dataclass(frozen=True)
class Unit:
    """What one round reveals: tokens [start, stop) of the text, their joint probability."""

    start: int
    stop: int
    text: str
    logprob: float  # model's log p(all the unit's tokens), teacher-forced
    playable: bool  # False: only whitespace or special tokens, revealed without a round

    @property
    def bits(self) -> float:
        return -self.logprob / LOG2


@dataclass(frozen=True)
class Round:
    unit: int
    guess: str  # as scored (with the leading space the model preferred, if any)
    guess_ids: tuple[int, ...]
    guess_logprob: float  # model's log p(guess tokens) at this point (summed over them)
    guess_rank: int  # model's rank of the guess's first token here
    hit: bool
    model_bits: float
    learner_bits: float


@dataclass(frozen=True)
class Game:
    scored: ScoredReply  # the whole text, teacher-forced
    units: tuple[Unit, ...]
    vocab_size: int
    pick: int = 0  # > 0: the learner picks among this many choices instead of typing
    at: int = 0  # the next unit to reveal
    rounds: tuple[Round, ...] = ()

    @property
    def done(self) -> bool:
        return self.at >= len(self.units)

    @property
    def current(self) -> Unit:
        return self.units[self.at]

    @property
    def playable(self) -> int:
        return sum(u.playable for u in self.units)

    @property
    def revealed(self) -> tuple[ScoredToken, ...]:
        stop = self.units[self.at - 1].stop if self.at else 0
        return self.scored.tokens[:stop]

    def context_ids(self) -> list[int]:
        """The ids before the current unit: what the model had seen when predicting it."""
        return [*self.scored.prompt_token_ids, *(t.id for t in self.scored.tokens[: self.current.start])]

    def hits(self) -> int:
        return sum(r.hit for r in self.rounds)

    def bits_per_unit(self) -> tuple[float, float]:
        """(learner, model) mean surprisal over the rounds played, bits."""
        n = len(self.rounds) or 1
        return sum(r.learner_bits for r in self.rounds) / n, sum(r.model_bits for r in self.rounds) / n


def _skip(game: Game) -> Game:
    """Reveal the units there is nothing to guess in (whitespace, special tokens)."""
    at = game.at
    while at < len(game.units) and not game.units[at].playable:
        at += 1
    return replace(game, at=at)


def new_game(scored: ScoredReply, vocab_size: int, pick: int = 0) -> Game:
    """A game over `scored` (teacher-forced text); pick > 1: the learner picks among that many."""
    toks = scored.tokens
    out = []
    for start, stop in units(toks):
        text = "".join(t.text for t in toks[start:stop] if not t.special)
        out.append(Unit(start, stop, text, sum(t.logprob for t in toks[start:stop]), bool(text.strip())))
    return _skip(Game(scored, tuple(out), vocab_size, pick if pick > 1 else 0))


def rank_among(tok: ScoredToken, token_id: int) -> tuple[float, int] | None:
    """(logprob, rank) of `token_id` at a scored position when it is in the kept top-k (so the rank is exact)."""
    prob = next((a.prob for a in tok.top if a.id == token_id), tok.prob if tok.id == token_id else None)
    if prob is None:
        return None
    rank = 1 + sum(a.prob > prob for a in tok.top) if tok.id != token_id else tok.rank
    return (math.log(prob) if prob > 0 else -math.inf), rank


def stored_guess(game: Game, guess_ids: Sequence[int]) -> tuple[float, int] | None:
    """(logprob, rank) of a one-token guess from the up-front scoring; None: the model must be asked."""
    if len(guess_ids) != 1:
        return None
    return rank_among(game.scored.tokens[game.current.start], guess_ids[0])


Scorer = Callable[[Sequence[int]], tuple[float, int]]  # guess ids -> (logprob, rank) from the model


def score_guess(game: Game, guess: str, tokenize: Callable[[str], list[int]], ask: Scorer
                ) -> tuple[str, list[int], float, int]:
    """-> (the guess as scored, its ids, logprob, rank): of the guess as typed and with a leading space
    (a word after a word), the form the model finds likelier."""
    guess = guess.rstrip() if guess.strip() else guess
    forms = [guess] if guess[:1].isspace() or not guess.strip() else [guess, " " + guess]
    best = None
    for form in forms:
        ids = tokenize(form)
        if not ids:
            continue
        lp, rank = stored_guess(game, ids) or ask(ids)
        if best is None or lp > best[2]:
            best = (form, ids, lp, rank)
    if best is None:
        raise BadInput("that guess has no tokens: type a word or a sign")
    return best


def is_hit(unit: Unit, tokens: Sequence[ScoredToken], guess: str, guess_ids: Sequence[int]) -> bool:
    """The guess is the real unit: the same ids, or the same text up to surrounding spaces."""
    real_ids = [t.id for t in tokens[unit.start : unit.stop]]
    return list(guess_ids) == real_ids or (bool(guess.strip()) and guess.strip() == unit.text.strip())


def learner_bits(hits: int, rounds: int, hit: bool, options: int) -> float:
    """Surprisal of a learner who backs their guess with their own hit rate so far.
    Example: learner_bits(0, 0, True, 100) -> 1.0 (confidence 1/2); a miss: log2(99 / 0.5)"""
    confidence = (hits + 1) / (rounds + 2)
    q = confidence if hit else (1 - confidence) / max(options - 1, 1)
    return -math.log2(q)


def choices(game: Game) -> list[tuple[str, float]]:
    """The pick menu -> [(text, the model's probability)]: the real unit and the model's likeliest whole
    first tokens, shuffled (seeded by the position: a replay shows the same menu)."""
    unit = game.current
    tok = game.scored.tokens[unit.start]
    menu = {unit.text: math.exp(unit.logprob)}
    for a in tok.top:
        if len(menu) >= game.pick:
            break
        if a.text.strip() and not BYTE_TEXT.match(a.text) and a.text not in menu:
            menu[a.text] = a.prob
    out = list(menu.items())
    random.Random(unit.start).shuffle(out)
    return out


def play(game: Game, guess: str, guess_ids: Sequence[int], guess_logprob: float, guess_rank: int,
         menu: Sequence[tuple[str, float]] = ()) -> Game:
    """The game after one (scored) guess at the current unit; with a `menu`, both play over its options."""
    if game.done:
        return game
    unit = game.current
    hit = is_hit(unit, game.scored.tokens, guess, guess_ids)
    if menu:
        total = sum(p for _, p in menu)
        real = next((p for text, p in menu if text == unit.text), math.exp(unit.logprob))
        model_bits, options = -math.log2(real / total), len(menu)
    else:
        model_bits, options = unit.bits, game.vocab_size
    r = Round(game.at, guess, tuple(guess_ids), guess_logprob, guess_rank, hit, model_bits,
              learner_bits(game.hits(), len(game.rounds), hit, options))
    return _skip(replace(game, at=game.at + 1, rounds=(*game.rounds, r)))


def surprises(game: Game, n: int = 3) -> list[Round]:
    """The rounds where the model was most surprised and the learner less so."""
    worse = [r for r in game.rounds if r.model_bits > r.learner_bits]
    return sorted(worse, key=lambda r: r.learner_bits - r.model_bits)[:n]
