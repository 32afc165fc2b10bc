"""The guessing game: units, the learner's score, guesses scored exactly (against the model's own
logits), a game played to the end on a real text, pick mode on Chinese."""

from __future__ import annotations

import math

import pytest
import torch

from greedyscore.guess import (
    choices,
    is_hit,
    learner_bits,
    new_game,
    play,
    rank_among,
    score_guess,
    stored_guess,
    surprises,
)
from greedyscore.render.guess import board_html, round_html, score_html, summary_html, surprisal_figure
from greedyscore.service import continuation_score, guess_ids
from greedyscore.types import Settings

TEXT = "Once upon a time, a little girl lived with her mother.\n\n今天天气很好。"


@pytest.fixture(scope="module")
def game(service, engine):
    return new_game(service.score_text(TEXT, Settings(top_k=20)), engine.info.vocab_size)


def brute_force(engine, context: list[int], ids: list[int]) -> tuple[float, int]:
    full = torch.tensor([context + ids])
    with torch.inference_mode():
        lp = torch.log_softmax(engine.model(full).logits[0].float(), dim=-1)
    rows = lp[len(context) - 1 : len(context) - 1 + len(ids)]
    total = float(sum(rows[i, t] for i, t in enumerate(ids)))
    return total, int((rows[0] > rows[0, ids[0]]).sum()) + 1


def asker(service, game):
    context = game.context_ids()
    return lambda ids: continuation_score(service, context, ids)


def test_units_cover_the_text_once_and_keep_split_characters_whole(game):
    assert "".join(u.text for u in game.units) == TEXT
    assert game.units[-1].stop == len(game.scored.tokens)
    assert any(u.stop - u.start > 1 for u in game.units)  # a Chinese character over two byte tokens
    assert all("\ufffd" not in u.text for u in game.units)
    blank = [u for u in game.units if not u.playable]
    assert blank and all(not u.text.strip() for u in blank)  # "\n\n" is revealed, never asked
    assert game.playable == len(game.units) - len(blank)


def test_learner_bits_follow_the_stated_rule():
    assert learner_bits(0, 0, True, 100) == pytest.approx(1.0)  # confidence 1/2
    assert learner_bits(0, 0, False, 101) == pytest.approx(-math.log2(0.5 / 100))
    assert learner_bits(8, 8, True, 100) == pytest.approx(-math.log2(0.9))  # (8 + 1) / (8 + 2)


def test_a_multi_token_guess_is_scored_as_the_sequence_it_is(game, service, engine):
    after = play(game, "Once", guess_ids(service, "Once"), 0.0, 1)
    tokenise = lambda text: guess_ids(service, text)  # noqa: E731
    said, ids, lp, rank = score_guess(after, "upon a time", tokenise, asker(service, after))
    assert said == " upon a time" and engine.tokenizer.decode(ids) == " upon a time"  # likelier with the space
    want = brute_force(engine, after.context_ids(), ids)
    assert lp == pytest.approx(want[0], abs=1e-4) and rank == want[1]


def test_a_one_token_guess_comes_from_the_up_front_pass_with_its_true_rank(game, engine):
    tok = game.scored.tokens[game.current.start]
    for alt in tok.top[:8]:
        stored = stored_guess(game, [alt.id])
        want = brute_force(engine, game.context_ids(), [alt.id])
        assert stored[0] == pytest.approx(want[0], abs=1e-4) and stored[1] == want[1]
    assert stored_guess(game, [tok.top[0].id, tok.top[1].id]) is None
    assert rank_among(tok, 10**9) is None


def test_a_game_played_to_the_end(game, service):
    g, rounds = game, 0
    while not g.done:
        unit = g.current
        said = unit.text if rounds % 2 == 0 else "banana"
        form, ids, lp, rank = score_guess(g, said, lambda text: guess_ids(service, text), asker(service, g))
        g = play(g, form, ids, lp, rank)
        assert g.rounds[-1].hit == (rounds % 2 == 0) == is_hit(unit, g.scored.tokens, form, ids)
        rounds += 1
    assert rounds == game.playable == len(g.rounds)
    you, model = g.bits_per_unit()
    playable = [u for u in game.units if u.playable]
    assert model == pytest.approx(sum(u.bits for u in playable) / len(playable))
    assert you > model  # a learner right half the time, against the model's own text
    assert "model" in summary_html(g) and len(surprisal_figure(g).data) == 2
    assert 'class="gs-guess-next"' not in board_html(g) and f"Round {rounds} of {rounds}" in score_html(g)
    assert ("gs-hit" if g.rounds[-1].hit else "gs-miss") in round_html(g)
    worst = surprises(g)
    assert worst == sorted(worst, key=lambda r: r.learner_bits - r.model_bits)


def test_pick_mode_offers_whole_units_and_scores_both_players_on_the_menu(service, engine):
    scored = service.score_text("今天天气很好，我们一起去公园散步吧。", Settings(top_k=20))
    g = new_game(scored, engine.info.vocab_size, 5)
    menus = 0
    while not g.done:
        menu = choices(g)
        texts = [t for t, _ in menu]
        assert g.current.text in texts and len(set(texts)) == len(texts) <= 5
        assert not any(t.startswith("\\x") for t in texts)  # no byte fragments of characters
        wrong = next((t for t in texts if t != g.current.text), g.current.text)
        form, ids, lp, rank = score_guess(g, wrong, lambda text: guess_ids(service, text), asker(service, g))
        real_p = dict(menu)[g.current.text]
        g = play(g, form, ids, lp, rank, menu)
        assert g.rounds[-1].model_bits == pytest.approx(-math.log2(real_p / sum(p for _, p in menu)))
        menus += 1
    assert menus >= 8 and any(len(t) == 1 and ord(t) > 0x3000 for t, _ in choices(new_game(g.scored, 1, 5)))


def test_hostile_text_and_guesses_are_escaped(service, engine):
    g = new_game(service.score_text('He said "hi" <img src=x onerror=alert(1)> & left.', Settings(top_k=5)),
                 engine.info.vocab_size)
    while not g.done:
        said = '<img src=x onerror=alert(1)> "q"'
        g = play(g, said, guess_ids(service, said), -20.0, 999)
        assert "<img" not in round_html(g) and "&lt;img" in round_html(g)
    assert "<img" not in board_html(g) and "&lt;" in board_html(g)
    ticks = surprisal_figure(g).layout.xaxis.ticktext
    assert any('"' in t for t in ticks) and not any("&quot;" in t for t in ticks)  # Plotly shows quotes as is
    assert any("&lt;" in t for t in ticks)
