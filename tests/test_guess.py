"""The guessing game: units, the learner's score, guesses scored exactly (against the model's own
logits), a game played to the end on a real text."""

from __future__ import annotations

import math

import pytest
import torch

from greedyscore.guess import choices, is_hit, learner_bits, new_game, play, stored_guess, surprises
from greedyscore.render.guess import board_html, round_html, summary_html, surprisal_figure
from greedyscore.types import Settings

TEXT = "Once upon a time, a little girl lived with her mother. 今天天气很好。"


@pytest.fixture(scope="module")
def game(service, engine):
    return new_game(service.score_text(TEXT, Settings(top_k=20)), engine.vocab_size)


def test_units_cover_the_text_once_and_keep_split_characters_whole(game):
    assert "".join(u.text for u in game.units) == TEXT
    assert [(u.start, u.stop) for u in game.units] == sorted((u.start, u.stop) for u in game.units)
    assert game.units[-1].stop == len(game.scored.tokens)
    assert any(u.stop - u.start > 1 for u in game.units)  # a Chinese character over two byte tokens
    assert all("\ufffd" not in u.text for u in game.units)


def test_learner_bits_follow_the_stated_rule():
    assert learner_bits(0, 0, True, 100) == pytest.approx(1.0)  # confidence 1/2
    assert learner_bits(0, 0, False, 101) == pytest.approx(-math.log2(0.5 / 100))
    assert learner_bits(8, 8, True, 100) == pytest.approx(-math.log2(0.9))  # (8 + 1) / (8 + 2)


def brute_force(engine, context: list[int], ids: list[int]) -> tuple[float, int]:
    full = torch.tensor([context + ids])
    with torch.inference_mode():
        lp = torch.log_softmax(engine.model(full).logits[0].float(), dim=-1)
    rows = lp[len(context) - 1 : len(context) - 1 + len(ids)]
    total = float(sum(rows[i, t] for i, t in enumerate(ids)))
    return total, int((rows[0] > rows[0, ids[0]]).sum()) + 1


def test_a_multi_token_guess_is_scored_as_the_sequence_it_is(game, service, engine):
    ids = service.guess_ids("upon a time", like=game.units[1].text)
    assert len(ids) == 3 and engine.decode(ids) == " upon a time"  # the real token's leading space added
    after_once = play(game, "Once", service.guess_ids("Once", like=game.units[0].text), 0.0, 1)
    got = service.score_continuation(after_once.context_ids(), ids)
    want = brute_force(engine, after_once.context_ids(), ids)
    assert got[0] == pytest.approx(want[0], abs=1e-4) and got[1] == want[1]


def test_a_one_token_guess_comes_from_the_up_front_pass(game, service, engine):
    unit = game.current
    top = game.scored.tokens[unit.start].top[3]  # the model's 4th choice here
    stored = stored_guess(game, [top.id])
    assert stored is not None and stored[1] == 4
    want = brute_force(engine, game.context_ids(), [top.id])
    assert stored[0] == pytest.approx(want[0], abs=1e-4)
    assert stored_guess(game, [top.id, top.id]) is None


def test_a_game_played_to_the_end(game, service):
    g = game
    for i in range(len(game.units)):
        unit = g.current
        assert unit.text in choices(g, 5)  # picking among choices, the answer is always offered
        said = unit.text if i % 2 == 0 else "banana"
        ids = service.guess_ids(said, like=unit.text)
        lp, rank = stored_guess(g, ids) or service.score_continuation(g.context_ids(), ids)
        g = play(g, said, ids, lp, rank)
        assert is_hit(unit, g.scored.tokens, said, ids) == (i % 2 == 0) == g.rounds[-1].hit
    assert g.done and len(g.rounds) == len(game.units)
    you, model = g.bits_per_unit()
    assert model == pytest.approx(sum(u.bits for u in game.units) / len(game.units))
    assert you > model  # a learner right half the time, against the model's own text
    assert all(r.model_bits > r.learner_bits for r in surprises(g))
    assert "model" in summary_html(g) and len(surprisal_figure(g).data) == 2
    assert 'class="gs-guess-next"' not in board_html(g)
    assert ("gs-hit" if g.rounds[-1].hit else "gs-miss") in round_html(g)


def test_hostile_guess_text_is_escaped(game, service):
    said = "<img src=x onerror=alert(1)>"
    g = play(game, said, service.guess_ids(said, like=game.current.text), -20.0, 999)
    assert "<img" not in round_html(g) and "&lt;img" in round_html(g)
