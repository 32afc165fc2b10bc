"""Guess the next token: a learner against the model on a known text (pure game logic).

The text is scored teacher-forced once, up front; the game reveals it one unit at a time (a token,
or the tokens of one split character). Each round the learner guesses; we report the real unit,
the model's probability of it, and the model's probability and rank of the learner's guess.

Score, in bits per unit (Shannon's guessing game): the model's surprisal is -log2 p(real unit).
The learner gives a guess, not a distribution, so we credit them with a confidence equal to
their own hit rate so far (Laplace's rule, (hits + 1) / (rounds + 2)) on the guess and spread the
rest evenly over the other options (the vocabulary, or the choices shown): a hit costs
-log2(confidence), a miss -log2((1 - confidence) / (options - 1)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .detokenize import units
from .types import ScoredReply, ScoredToken

LOG2 = math.log(2)


@dataclass(frozen=True)
class Unit:
    """What one round reveals: tokens [start, stop) of the text, their joint probability."""

    start: int
    stop: int
    text: str
    logprob: float  # model's log p(all the unit's tokens), teacher-forced

    @property
    def bits(self) -> float:
        return -self.logprob / LOG2


@dataclass(frozen=True)
class Round:
    unit: int
    guess: str
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
    options: int  # how many options the learner chooses among: the vocabulary, or the choices shown
    rounds: tuple[Round, ...] = ()

    @property
    def done(self) -> bool:
        return len(self.rounds) >= len(self.units)

    @property
    def current(self) -> Unit:
        return self.units[len(self.rounds)]

    @property
    def revealed(self) -> tuple[ScoredToken, ...]:
        stop = self.units[len(self.rounds) - 1].stop if self.rounds else 0
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


def new_game(scored: ScoredReply, vocab_size: int, choices: int = 0) -> Game:
    """A game over `scored` (teacher-forced text); choices > 0: the learner picks among that many."""
    toks = scored.tokens
    out = []
    for start, stop in units(toks):
        text = "".join(t.text for t in toks[start:stop])
        out.append(Unit(start, stop, text, sum(t.logprob for t in toks[start:stop])))
    return Game(scored, tuple(out), choices if choices > 1 else vocab_size)


def stored_guess(game: Game, guess_ids: Sequence[int]) -> tuple[float, int] | None:
    """(logprob, rank) of a one-token guess from the up-front scoring, when it was in the top-k kept
    there; None when the model must be asked (several tokens, or outside the top-k)."""
    if len(guess_ids) != 1:
        return None
    tok = game.scored.tokens[game.current.start]
    for rank, alt in enumerate(tok.top, start=1):
        if alt.id == guess_ids[0]:
            return math.log(alt.prob) if alt.prob > 0 else -math.inf, rank
    if tok.id == guess_ids[0]:
        return tok.logprob, tok.rank
    return None


def is_hit(unit: Unit, tokens: Sequence[ScoredToken], guess: str, guess_ids: Sequence[int]) -> bool:
    """The guess is the real unit: the same ids, or the same text up to surrounding spaces."""
    real_ids = [t.id for t in tokens[unit.start : unit.stop]]
    return list(guess_ids) == real_ids or (bool(guess.strip()) and guess.strip() == unit.text.strip())


def learner_bits(hits: int, rounds: int, hit: bool, options: int) -> float:
    """Surprisal of a learner who backs their guess with their own hit rate so far.

    Example: learner_bits(0, 0, True, 100) -> 1.0 (confidence 1/2); a miss: log2(99 / 0.5)
    """
    confidence = (hits + 1) / (rounds + 2)
    q = confidence if hit else (1 - confidence) / max(options - 1, 1)
    return -math.log2(q)


def play(game: Game, guess: str, guess_ids: Sequence[int], guess_logprob: float, guess_rank: int) -> Game:
    """The game after one guess at the current unit (the guess already scored by the model)."""
    if game.done:
        return game
    unit = game.current
    hit = is_hit(unit, game.scored.tokens, guess, guess_ids)
    r = Round(len(game.rounds), guess, tuple(guess_ids), guess_logprob, guess_rank, hit, unit.bits,
              learner_bits(game.hits(), len(game.rounds), hit, game.options))
    return replace(game, rounds=(*game.rounds, r))


def choices(game: Game, k: int) -> list[str]:
    """The options shown when the learner picks: the model's top-k at the current unit's first
    token, the real unit's text replacing the last if it is not among them, in alphabetical order
    (neither the model's favourite nor the answer stands out by its place)."""
    unit = game.current
    tok = game.scored.tokens[unit.start]
    opts = [a.text for a in tok.top[:k]]
    if unit.text not in opts:
        opts = [*opts[: k - 1], unit.text]
    return sorted(set(opts))


def surprises(game: Game, n: int = 3) -> list[Round]:
    """The rounds where the model was most surprised and the learner less so."""
    worse = [r for r in game.rounds if r.model_bits > r.learner_bits]
    return sorted(worse, key=lambda r: r.learner_bits - r.model_bits)[:n]
