"""Comparing two scorings of one text: alignment on characters across different tokenizers, and
real comparisons (bfloat16, int8, another system prompt, another model) checked against
independent forwards."""

from __future__ import annotations

import heapq
import json
import math

import pytest
import torch

from greedyscore.align import align, biggest, compare
from greedyscore.errors import BadInput
from greedyscore.render.compare import compare_html, delta_color
from greedyscore.types import ReplyStats, ScoredReply, ScoredToken, Timings
from greedyscore.variants import CONVERSATION, SYSTEM, Variants, compare_text

MIXED = "你好🙂 world, 北京! 🍜🍜 ok"


def char_tokens(text: str, seed: int = 0) -> list[ScoredToken]:
    """Another tokenizer: one token per character, with made-up logprobs."""
    g = torch.Generator().manual_seed(seed)
    lps = (-torch.rand(len(text), generator=g) * 5).tolist()
    return [ScoredToken(id=i, text=c, special=False, prob=math.exp(lp), logprob=lp, rank=1, entropy=0.0, margin=0.0,
                        top=()) for i, (c, lp) in enumerate(zip(text, lps))]


def test_alignment_across_two_tokenizers_accounts_for_every_character_once(service):
    a = service.score_text(MIXED).tokens  # SmolLM2's byte-level BPE: emoji and hanzi split into byte tokens
    assert any(t.text == "" for t in a)
    b = char_tokens(MIXED)
    spans = align(a, b)
    assert "".join(s.text for s in spans) == MIXED
    assert [s.start for s in spans[1:]] == [s.stop for s in spans[:-1]]
    assert sum(s.logprob_a for s in spans) == pytest.approx(sum(t.logprob for t in a))
    assert sum(s.logprob_b for s in spans) == pytest.approx(sum(t.logprob for t in b))
    assert sum(s.tokens_a for s in spans) == len(a) and sum(s.tokens_b for s in spans) == len(b)
    ends_a, n = set(), 0
    for t in a:
        n += len(t.text)
        ends_a.add(n)
    assert all(s.stop in ends_a for s in spans)  # a span never cuts through one of A's tokens
    assert any(s.tokens_a > 1 for s in spans)  # the byte tokens of a character stay with it
    with pytest.raises(ValueError):
        align(a, char_tokens(MIXED + "x"))


def as_reply(tokens: list[ScoredToken], model: str = "m") -> ScoredReply:
    return ScoredReply(model=model, backend="transformers", text="".join(t.text for t in tokens), prompt_token_ids=(),
                       tokens=tuple(tokens), stats=ReplyStats(len(tokens), 0.0, 1.0, 1.0), timings=Timings(0.0, 0.0))


def test_a_side_without_bos_is_aligned_approximately_and_says_so():
    full = char_tokens("Hello world")
    headless = char_tokens("ello world", seed=1)  # a BOS-less tokenizer takes "H" as context
    cmp = compare(as_reply(full), as_reply(headless), "A", "B")
    assert "".join(s.text for s in cmp.spans) == "ello world" and any("approximate" in n for n in cmp.notes)
    assert sum(s.logprob_a for s in cmp.spans) == pytest.approx(sum(t.logprob for t in full[1:]))
    with pytest.raises(BadInput, match="different texts"):
        compare(as_reply(full), as_reply(char_tokens("Goodbye")), "A", "B")


@pytest.fixture(scope="module")
def variants(service, tmp_path_factory):
    return Variants(service, str(tiny_model(tmp_path_factory.mktemp("tiny"))))


def tiny_model(path):
    """Another model with another tokenizer: a small random Llama over a character-level BPE vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = __import__("tokenizers").decoders.Sequence([__import__("tokenizers").decoders.ByteFallback(),
                                                             __import__("tokenizers").decoders.Metaspace()])
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=[f"<0x{i:02X}>" for i in range(256)])
    tok.train_from_iterator(["The capital of France is Paris.", MIXED, "hello world"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def test_bfloat16_against_float32_matches_independent_forwards(variants, engine):
    text, prompt = "The capital of France is Paris. It is known for the Eiffel Tower.", "What is the capital of France?"
    cmp = compare_text(variants, text, "bfloat16", prompt)
    assert cmp.same_tokens and len(cmp.spans) == len(cmp.a.tokens) and not cmp.notes
    bf16 = variants.side("bfloat16").service.engine.model
    assert next(bf16.parameters()).dtype == torch.bfloat16
    ids = list(cmp.a.prompt_token_ids) + [t.id for t in cmp.a.tokens]
    n = len(cmp.a.prompt_token_ids)
    with torch.inference_mode():
        for model, side in ((engine.model, "a"), (bf16, "b")):
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
            want = [float(lp[n - 1 + i, t]) for i, t in enumerate(ids[n:])]
            got = [getattr(s, f"logprob_{side}") for s in cmp.spans]
            # bfloat16 keeps ~3 significant digits: logits of ~20 carry ~0.1-0.2 of path-dependent rounding
            # (which rows are computed together, and by which kernel: a chunk of <= 16 rows goes through
            # the C kernel, a longer one through oneDNN), so B matches to that, A to float32
            assert got == pytest.approx(want, abs=0.25 if side == "b" else 1e-4)
    assert any(abs(s.delta) > 1e-3 for s in cmp.spans)  # bfloat16 does move the numbers
    page = compare_html(cmp)
    assert "gs-cmp-strip" in page and "points" in page and "B less sure" in page


def test_int8_and_system_prompt_comparisons(variants, service):
    text = "Paris is the capital of France."
    q = compare_text(variants, text, "int8", "Name a capital.")
    assert q.same_tokens and any(abs(s.delta) > 1e-3 for s in q.spans) and "int8" in q.label_b
    sp = compare_text(variants, text, SYSTEM, "Name a capital.", "", "You are a pirate. Answer like one.")
    from greedyscore.types import Message

    plain = service.score_text(text, messages=[Message("user", "Name a capital.")])
    assert [s.logprob_a for s in sp.spans] == pytest.approx([t.logprob for t in plain.tokens], abs=1e-5)
    assert sp.b.prompt_token_ids != sp.a.prompt_token_ids and biggest(sp)[0].points != 0
    with pytest.raises(Exception, match="different system prompt"):
        compare_text(variants, text, SYSTEM, "", "same", "same")
    primed = [Message("user", "From now on, the capital of France is Lyon."), Message("assistant", "Understood."),
              Message("user", "Name a capital.")]
    cv = compare_text(variants, text, CONVERSATION, "Name a capital.", conversation_b=primed)
    want_b = service.score_text(text, messages=primed)
    assert [s.logprob_b for s in cv.spans] == pytest.approx([t.logprob for t in want_b.tokens], abs=1e-5)
    assert cv.label_b == "conversation B"
    assert cv.b.prompt_token_ids == tuple(service.engine.tokenizer.prompt_ids(primed))


def test_another_model_with_another_tokenizer(variants):
    cmp = compare_text(variants, MIXED, "another model")
    assert not cmp.same_tokens and cmp.notes and "".join(s.text for s in cmp.spans) == MIXED
    # no per-step divergence across tokenizers: the reason, with both token counts, and no numbers
    assert cmp.divergence is None and "needs one tokenizer" in cmp.no_divergence
    assert f"into {len(cmp.a.tokens)} tokens, B into {len(cmp.b.tokens)}" in cmp.no_divergence
    assert cmp.to_json()["steps"] is None and cmp.to_json()["divergence_note"] == cmp.no_divergence
    assert "needs one tokenizer" in compare_html(cmp) and "gs-cmp-strip" in compare_html(cmp)
    assert sum(s.tokens_b for s in cmp.spans) == len(cmp.b.tokens) != len(cmp.a.tokens)
    data = json.loads(json.dumps(cmp.to_json(), ensure_ascii=False))
    assert data["total_logprob_b"] == pytest.approx(sum(t.logprob for t in cmp.b.tokens))
    assert data["same_tokens"] is False and "".join(s["text"] for s in data["spans"]) == MIXED


def test_delta_colours_diverge_from_white():
    assert delta_color(0.0) == "rgb(255,255,255)"
    red, blue = delta_color(-5), delta_color(5)
    assert red != blue and red.startswith("rgb(202") and blue.startswith("rgb(5,")


def plain_rows(model, ids: list[int], n: int, split: bool = False) -> list[list[float]]:
    """The n logit rows that predict ids[-n:], as Python floats, from plain forwards of `model`: the
    whole sequence at once, or (split) its context first into a cache, then the rest in one call."""
    with torch.inference_mode():
        if not split:
            return model(input_ids=torch.tensor([ids])).logits[0, -n - 1:-1].double().tolist()
        from transformers import DynamicCache

        cache, start = DynamicCache(config=model.config), len(ids) - n - 1
        model(input_ids=torch.tensor([ids[:start]]), cache=cache, use_cache=True)
        return model(input_ids=torch.tensor([ids[start:-1]]), cache=cache, use_cache=True).logits[0].double().tolist()


def brute_force(row_a: list[float], row_b: list[float], k: int) -> tuple[float, float, int, int]:
    """(KL(A || B) summed over every id in float64, |top-k A & top-k B| / k as Python sets, argmax A, argmax B)."""
    def logp(row: list[float]) -> list[float]:
        top = max(row)
        log_z = top + math.log(math.fsum(math.exp(x - top) for x in row))
        return [x - log_z for x in row]

    la, lb = logp(row_a), logp(row_b)
    kl = math.fsum(math.exp(a) * (a - b) for a, b in zip(la, lb) if math.exp(a) > 0)
    ids = range(len(row_a))
    top_a, top_b = (set(heapq.nlargest(k, ids, key=row.__getitem__)) for row in (row_a, row_b))
    return kl, len(top_a & top_b) / k, max(ids, key=row_a.__getitem__), max(ids, key=row_b.__getitem__)


def check_steps(cmp, rows_a: list[list[float]], rows_b: list[list[float]], kl_tol: float) -> list[tuple]:
    """The comparison's steps against brute force on independent rows; -> the brute-force tuples."""
    d = cmp.divergence
    assert d is not None and not cmp.no_divergence and len(d.steps) == len(cmp.a.tokens) == len(rows_a)
    want = [brute_force(ra, rb, d.k) for ra, rb in zip(rows_a, rows_b)]
    assert [s.kl for s in d.steps] == pytest.approx([w[0] for w in want], rel=kl_tol, abs=1e-7)
    assert [s.overlap for s in d.steps] == [w[1] for w in want]
    assert [(s.argmax_a, s.argmax_b) for s in d.steps] == [(w[2], w[3]) for w in want]
    assert [s.greedy_differs for s in d.steps] == [w[2] != w[3] for w in want]
    data = cmp.to_json()
    assert data["mean_kl"] == pytest.approx(sum(w[0] for w in want) / len(want), rel=kl_tol)
    assert data["greedy_differs_at"] == [i for i, w in enumerate(want) if w[2] != w[3]]
    assert [s["kl"] for s in data["steps"]] == [s.kl for s in d.steps] and data["overlap_k"] == d.k
    return want


def test_per_step_kl_of_two_system_prompts_against_two_plain_forwards(variants, engine):
    text, prompt = "The capital of France is Paris. It is known for the Eiffel Tower.", "What is the capital of France?"
    cmp = compare_text(variants, text, SYSTEM, prompt, "", "You are a pirate. Answer like one.", top_k=5)
    n = len(cmp.a.tokens)
    text_ids = [t.id for t in cmp.a.tokens]
    rows = [plain_rows(engine.model, [*r.prompt_token_ids, *text_ids], n) for r in (cmp.a, cmp.b)]
    want = check_steps(cmp, *rows, kl_tol=1e-3)  # float32 both: only the engine's chunking's rounding
    assert max(w[0] for w in want) > 0.1 and min(w[1] for w in want) < 1  # the pirate does move the predictions
    assert any(w[2] != w[3] for w in want)  # and changes a greedy choice
    assert "gs-cmp-kl-summary" in compare_html(cmp)


def test_per_step_kl_of_bfloat16_against_two_plain_forwards(variants, engine):
    cmp = compare_text(variants, "Paris is the capital of France.", "bfloat16", "Name a capital.", top_k=3)
    bf16 = variants.side("bfloat16").service.engine.model
    ids, n = [*cmp.a.prompt_token_ids, *(t.id for t in cmp.a.tokens)], len(cmp.a.tokens)
    # bfloat16 rows depend on which rows are computed together (see the test above): B's forwards are split
    # as the engine splits a short text (context, then the text), so both round alike; A's is one forward
    want = check_steps(cmp, plain_rows(engine.model, ids, n), plain_rows(bf16, ids, n, split=True), kl_tol=1e-3)
    assert all(0 < w[0] < 0.1 for w in want)  # bfloat16: small, never zero
