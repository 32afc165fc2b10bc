"""Our scores against independent references on the real embedded model.

References: transformers' own generate(output_scores=True) + compute_transition_scores, a
verification rescoring, and the seed recipe (softmax over the whole [prompt+reply, vocab]).
"""

from __future__ import annotations

import math

import pytest
import torch
from cases import CONVERSATIONS

from greedyscore.types import Message, Settings

CASES = CONVERSATIONS  # every shared case: English, Chinese, multi-turn, code, emoji, system, markup
N_NEW = 24


@pytest.fixture(scope="module", params=list(CASES))
def case(request, service):
    messages = CASES[request.param]
    reply = service.chat(messages, Settings(max_new_tokens=N_NEW, top_k=5, verify=True))
    return messages, reply


def test_matches_compute_transition_scores(case, engine):
    messages, reply = case
    prompt = engine.tokenizer.prompt_ids(messages)
    assert list(reply.prompt_token_ids) == prompt
    with torch.inference_mode():
        out = engine.model.generate(
            torch.tensor([prompt]), max_new_tokens=N_NEW, do_sample=False, output_scores=True,
            return_dict_in_generate=True, eos_token_id=sorted(engine.info.stop_ids), pad_token_id=engine.pad_id,
        )
        # float64 in: in float32 its log-softmax over a strided dim is itself off by up to 2e-4
        # (measured against float64), ten times our own error.
        scores64 = tuple(s.double() for s in out.scores)
        ref = engine.model.compute_transition_scores(out.sequences, scores64, normalize_logits=True)[0]
    ref_ids = out.sequences[0, len(prompt):].tolist()
    assert [t.id for t in reply.tokens] == ref_ids
    for tok, lp in zip(reply.tokens, ref.tolist()):
        assert abs(tok.prob - math.exp(lp)) < 1e-4, tok


def test_brute_force_softmax_fields(case, engine):
    """Every per-token field against a plain softmax over the reference logits."""
    messages, reply = case
    ids = [t.id for t in reply.tokens]
    with torch.inference_mode():
        logits = engine.model(torch.tensor([list(reply.prompt_token_ids) + ids])).logits[0]
    n = len(reply.prompt_token_ids)
    for i, tok in enumerate(reply.tokens):
        p = torch.softmax(logits[n - 1 + i].double(), -1)
        order = p.argsort(descending=True)
        assert tok.rank == int((p > p[tok.id]).sum()) + 1
        assert abs(tok.entropy - float(-(p * p.clamp_min(1e-300).log()).sum())) < 1e-3
        assert abs(tok.margin - float(p[order[0]] - p[order[1]])) < 1e-4
        assert [a.id for a in tok.top][:2] == order[:2].tolist() or abs(float(p[order[1]] - p[order[2]])) < 1e-5
        assert abs(tok.top[0].prob - float(p[order[0]])) < 1e-4
        assert 0.0 < tok.prob <= 1.0 and tok.logprob <= 0.0


def test_single_pass_equals_verification(case):
    _, reply = case
    assert reply.verified
    for tok in reply.tokens:
        assert abs(tok.prob - tok.rescored_prob) < 1e-4
        assert tok.rank == 1 and tok.rescored_rank == 1 or tok.near_tie


def seed_recipe_probs(full_logits: torch.Tensor, n_prompt: int, reply_ids: list[int]) -> list[float]:
    """The known workaround: softmax over [prompt+reply, vocab], row n_prompt-1+i."""
    probs = torch.softmax(full_logits.float(), dim=-1)
    return [float(probs[n_prompt - 1 + i, t]) for i, t in enumerate(reply_ids)]


def test_seed_recipe_agrees(case, engine):
    messages, reply = case
    prompt = list(reply.prompt_token_ids)
    ids = [t.id for t in reply.tokens]
    with torch.inference_mode():
        full = engine.model(torch.tensor([prompt + ids])).logits[0]
    seed = seed_recipe_probs(full, len(prompt), ids)
    assert max(abs(a - t.prob) for a, t in zip(seed, reply.tokens)) < 1e-4


def test_texts_join_to_reply_and_stop_token_kept(case, engine):
    _, reply = case
    ids = [t.id for t in reply.tokens]
    plain = [i for i in ids if not engine.tokenizer.is_special(i)]
    decoded = engine.tokenizer.hf.decode(plain, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert reply.text == decoded
    assert "".join(t.text for t in reply.tokens if not t.special) == decoded
    if "\ufffd" not in decoded:
        assert all("\ufffd" not in t.text for t in reply.tokens)
    if reply.finish_reason == "stop":
        assert reply.tokens[-1].special and reply.tokens[-1].id in engine.info.stop_ids
        assert reply.tokens[-1].text == engine.tokenizer.hf.convert_ids_to_tokens(reply.tokens[-1].id)


def test_stats_from_tokens(case):
    _, reply = case
    lps = [t.logprob for t in reply.tokens]
    assert reply.stats.n_tokens == len(lps)
    assert math.isclose(reply.stats.mean_logprob, sum(lps) / len(lps))
    assert math.isclose(reply.stats.perplexity, math.exp(-sum(lps) / len(lps)))
    assert math.isclose(reply.stats.min_prob, min(t.prob for t in reply.tokens))


def test_teacher_forced_text_matches_full_forward(service, engine):
    text = "The quick brown fox jumps over the lazy dog. 狐狸 🦊"
    reply = service.score_text(text, Settings(top_k=3))
    context, target = engine.tokenizer.text_ids(text)
    assert [t.id for t in reply.tokens] == target
    assert reply.text == text
    with torch.inference_mode():
        logits = engine.model(torch.tensor([context + target])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    for i, tok in enumerate(reply.tokens):
        assert abs(tok.logprob - float(lp[len(context) - 1 + i, tok.id])) < 1e-4


def test_teacher_forced_long_text_chunks(service, engine):
    """More tokens than one scoring chunk: chunk borders must not shift rows."""
    text = " ".join(f"word{i}" for i in range(120))
    reply = service.score_text(text, Settings(top_k=2))
    context, target = engine.tokenizer.text_ids(text)
    assert len(target) > 128
    with torch.inference_mode():
        lp = torch.log_softmax(engine.model(torch.tensor([context + target])).logits[0].double(), -1)
    got = torch.tensor([t.logprob for t in reply.tokens], dtype=torch.float64)
    want = lp[torch.arange(len(target)) + len(context) - 1, torch.tensor(target)]
    assert float((got - want).abs().max()) < 1e-4


def test_conversation_scores_match_full_forward(service, engine):
    """score_messages: the ids of the templated conversation after its first, and each one's
    logprob, rank and entropy against a plain float64 log-softmax of one forward pass."""
    messages = CASES["multi-turn"]
    reply = service.score_messages(messages, Settings(top_k=2))
    ids = engine.tokenizer.prompt_ids(messages)
    assert [t.id for t in reply.tokens] == ids[1:]
    with torch.inference_mode():
        lp = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0].double(), -1)  # [n, vocab]
    for i, tok in enumerate(reply.tokens):
        row = lp[i]
        assert abs(tok.logprob - float(row[tok.id])) < 1e-4
        assert tok.rank == int((row > row[tok.id]).sum()) + 1
        assert abs(tok.entropy - float(-(row.exp() * row).sum())) < 1e-3
    assert max(t.rank for t in reply.tokens) > 1  # real text is not all argmax: ranks are exercised


def test_model_defaults_never_touch_the_logits(engine):
    """A model whose generation_config asks for penalties still decodes and scores on raw logits."""
    from greedyscore.engines.transformers import TransformersEngine
    from greedyscore.service import Service

    engine.model.generation_config.repetition_penalty = 1.5
    engine.model.generation_config.no_repeat_ngram_size = 2
    penalised = TransformersEngine(engine.model, engine.tokenizer.hf, "penalised")  # as if loaded so
    assert engine.model.generation_config.repetition_penalty in (None, 1.0)
    reply = Service(penalised).chat([Message("user", "Repeat: la la la la la la")], Settings(max_new_tokens=16))
    ids = [t.id for t in reply.tokens]
    with torch.inference_mode():
        logits = engine.model(torch.tensor([list(reply.prompt_token_ids) + ids])).logits[0]
    n = len(reply.prompt_token_ids)
    raw = torch.log_softmax(logits[n - 1 : n - 1 + len(ids)].double(), -1)
    assert raw.argmax(-1).tolist() == ids  # greedy on raw logits
    for i, tok in enumerate(reply.tokens):
        assert abs(tok.prob - math.exp(float(raw[i, tok.id]))) < 1e-4
