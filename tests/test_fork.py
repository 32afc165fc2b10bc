"""Forks on the real model: the road not taken, against transformers' own greedy generation."""

from __future__ import annotations

import math

import pytest
import torch
from cases import CONVERSATIONS

from greedyscore.compare import compare_fork, forks_that_matter, path_cost, rejoin_point
from greedyscore.errors import BadInput, InputTooLong
from greedyscore.types import Settings

N_NEW = 16


@pytest.fixture(scope="module")
def originals(service):
    return {case: service.chat(CONVERSATIONS[case], Settings(max_new_tokens=24, top_k=5))
            for case in ("english", "chinese")}


def reference_continuation(engine, ids: list[int], n_new: int) -> tuple[list[int], list[float]]:
    """transformers' own greedy generate + compute_transition_scores (float64) from exactly `ids`."""
    with torch.inference_mode():
        out = engine.model.generate(torch.tensor([ids]), max_new_tokens=n_new, do_sample=False, output_scores=True,
                                    return_dict_in_generate=True, eos_token_id=sorted(engine.info.stop_ids),
                                    pad_token_id=engine.pad_id)
        scores = tuple(s.double() for s in out.scores)
        lps = engine.model.compute_transition_scores(out.sequences, scores, normalize_logits=True)[0]
    new = out.sequences[0, len(ids):].tolist()
    end = next((i + 1 for i, t in enumerate(new) if t in engine.info.stop_ids), len(new))
    return new[:end], lps[:end].tolist()


def fork_cases(originals):
    english, chinese = originals["english"], originals["chinese"]
    yield "english", english, 0, english.tokens[0].top[1].id  # "The" -> "L"
    yield "english", english, 5, english.tokens[5].top[1].id  # " Paris" -> " L"
    yield "english", english, 6, english.tokens[6].top[1].id  # "." -> ","
    yield "chinese", chinese, 0, chinese.tokens[0].top[2].id  # a byte token: the first half of 你


@pytest.mark.parametrize("k", range(4))
def test_fork_continues_exactly_as_transformers_would(k, originals, service, engine):
    case, original, at, t = list(fork_cases(originals))[k]
    fork = service.fork(CONVERSATIONS[case], [x.id for x in original.tokens], at, t, Settings(max_new_tokens=N_NEW))
    ids = [x.id for x in fork.tokens]
    assert fork.forked_at == at and ids[:at] == [x.id for x in original.tokens[:at]] and ids[at] == t
    for a, b in zip(fork.tokens[:at], original.tokens[:at]):  # the shared prefix keeps its numbers
        assert abs(a.prob - b.prob) < 1e-4
    swapped = next(a for a in original.tokens[at].top if a.id == t)
    assert abs(fork.tokens[at].prob - swapped.prob) < 1e-4 and fork.tokens[at].rank > 1
    prompt = list(original.prompt_token_ids)
    assert list(fork.prompt_token_ids) == prompt
    want_ids, want_lps = reference_continuation(engine, prompt + ids[: at + 1], N_NEW)
    assert ids[at + 1 :] == want_ids
    for tok, lp in zip(fork.tokens[at + 1 :], want_lps):
        assert abs(tok.prob - math.exp(lp)) < 1e-4
    assert "".join(x.text for x in fork.tokens if not x.special) == fork.text
    if "\ufffd" not in engine.tokenizer.decode([i for i in ids if not engine.tokenizer.is_special(i)]):
        assert "\ufffd" not in fork.text


def test_chinese_fork_onto_a_split_character_completes_it(originals, service, engine):
    original = originals["chinese"]
    t = original.tokens[0].top[2].id
    assert engine.tokenizer.display(t).startswith("\\x")  # half a character
    fork = service.fork(CONVERSATIONS["chinese"], [x.id for x in original.tokens], 0, t,
                        Settings(max_new_tokens=N_NEW))
    assert fork.tokens[0].text == "" and fork.tokens[1].joined >= 1  # the character arrives whole
    assert fork.text.startswith(fork.tokens[1].text) and "\ufffd" not in fork.tokens[1].text


def test_forking_onto_the_chosen_token_reproduces_the_reply(originals, service):
    original = originals["english"]
    ids = [x.id for x in original.tokens]
    for at in (0, 3):
        again = service.fork(CONVERSATIONS["english"], ids, at, ids[at], Settings(max_new_tokens=24 - at - 1))
        assert [x.id for x in again.tokens] == ids
        assert compare_fork(original, again).rejoin is None or again.text == original.text


def test_fork_onto_an_end_of_turn_stops_there(originals, service):
    original = originals["english"]
    ids = [x.id for x in original.tokens]
    end = next(iter(service.engine.info.stop_ids))
    fork = service.fork(CONVERSATIONS["english"], ids, 2, end, Settings(max_new_tokens=8))
    assert [x.id for x in fork.tokens] == ids[:2] + [end] and fork.finish_reason == "stop"


def test_fork_verification_and_json(originals, service):
    original = originals["english"]
    ids = [x.id for x in original.tokens]
    fork = service.fork(CONVERSATIONS["english"], ids, 5, original.tokens[5].top[1].id,
                        Settings(max_new_tokens=8, verify=True))
    assert fork.verified and all(abs(t.prob - t.rescored_prob) < 1e-4 for t in fork.tokens)
    data = fork.to_json()
    assert data["forked_at"] == 5 and [t["shared"] for t in data["tokens"]][:6] == [True] * 5 + [False]
    assert "forked_at" not in original.to_json()


@pytest.mark.parametrize("args,needle", [
    (dict(at=99), "at must be a position in the reply"),
    (dict(at=-1), "at must be a position in the reply"),
    (dict(at=True), "at must be a whole number"),
    (dict(token_id=10**9), "unknown token id"),
    (dict(token_id=-5), "unknown token id"),
    (dict(reply="abc"), "reply_token_ids"),
])
def test_bad_fork_input(args, needle, originals, service):
    ids = [x.id for x in originals["english"].tokens]
    with pytest.raises(BadInput, match=needle):
        service.fork(CONVERSATIONS["english"], args.get("reply", ids), args.get("at", 1), args.get("token_id", 60))


def test_fork_past_the_context(originals, service):
    ids = [x.id for x in originals["english"].tokens]
    with pytest.raises(InputTooLong, match="fork"):
        service.fork(CONVERSATIONS["english"], ids, 1, 60, Settings(max_new_tokens=8190))


# --- pure comparisons --------------------------------------------------------------------------------
def test_rejoin_point():
    assert rejoin_point([1, 2, 3, 4, 5], [1, 9, 3, 4, 5], 1) == (2, 2)
    assert rejoin_point([1, 2, 3, 4, 5, 6], [1, 9, 8, 3, 4, 5, 6], 1) == (3, 2)  # the fork took a detour
    assert rejoin_point([1, 2, 3, 4], [1, 9, 7, 6], 1) is None
    assert rejoin_point([1, 2, 5, 0], [1, 9, 5, 0], 1) == (2, 2)  # a short run that ends both counts
    assert rejoin_point([1, 2, 7, 8, 9, 0], [1, 3, 7, 4, 0], 1) is None  # single stray matches do not


def test_path_cost_and_forks_that_matter(originals):
    english = originals["english"]
    cost = path_cost(english)
    assert cost.total_logprob == pytest.approx(sum(t.logprob for t in english.tokens))
    assert cost.perplexity == pytest.approx(english.stats.perplexity)
    points = forks_that_matter(english, 2)
    margins = sorted(t.margin for t in english.tokens if not t.special)
    assert sorted(p.margin for p in points) == pytest.approx(margins[:2])
    assert [p.at for p in points] == sorted(p.at for p in points)
    assert points[0].runner_up.id == english.tokens[points[0].at].top[1].id
