"""The lean decode step computes what transformers' forward computes, row by row, padding included."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from greedyscore.engines.base import GenerateRequest
from greedyscore.engines.decode import DecodeBatch
from greedyscore.engines.llama_step import LlamaStep
from greedyscore.types import Message


def _steps(model, stop_ids, prompts, fast: bool, n: int) -> list[torch.Tensor]:
    """Each step's logits of a batch of rows with prompts of different lengths (left padding)."""
    batch = DecodeBatch(model, stop_ids, fast=fast)
    assert (batch.fast_step is not None) == fast
    for p in prompts:
        batch.join(GenerateRequest(tuple(p), n, 3))
    seen = []
    for _ in range(n - 1):
        batch.step()
        seen.append(batch.logits.clone())
    return seen


def test_the_lean_step_gives_transformers_logits_for_a_padded_batch(engine):
    prompts = [engine.prompt_ids([Message("user", text)]) for text in
               ("Hi", "你好，请介绍一下你自己", "Write a long poem about the sea and the moon and bread.")]
    assert len({len(p) for p in prompts}) == 3
    stop = frozenset({engine.model.config.vocab_size - 1})  # no row stops early: every step compares 3 rows
    lean = _steps(engine.model, stop, prompts, True, 12)
    reference = _steps(engine.model, stop, prompts, False, 12)
    for mine, theirs in zip(lean, reference, strict=True):
        assert mine.shape == theirs.shape == (3, engine.model.config.vocab_size)
        assert torch.allclose(mine, theirs, atol=1e-4, rtol=0)
        assert torch.equal(mine.argmax(-1), theirs.argmax(-1))


def _tiny(**extra) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **extra)
    return LlamaForCausalLM(cfg).eval()


def test_only_plain_llamas_take_the_lean_step():
    assert LlamaStep.of(_tiny()) is not None
    assert LlamaStep.of(_tiny(attention_bias=True)) is None
    assert LlamaStep.of(_tiny(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})) is None


def test_the_lean_step_on_a_random_llama_in_bfloat16_and_float32():
    for dtype, atol in ((torch.float32, 1e-5), (torch.bfloat16, 0.1)):
        model = _tiny().to(dtype)
        prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]]
        stop = frozenset({96})
        lean = _steps(model, stop, prompts, True, 8)
        reference = _steps(model, stop, prompts, False, 8)
        for mine, theirs in zip(lean, reference, strict=True):
            assert torch.allclose(mine, theirs, atol=atol, rtol=0)


def _generate(model, requests, fast: bool) -> dict:
    batch = DecodeBatch(model, frozenset({96}), fast=fast)
    for i, r in enumerate(requests):
        batch.join(r, tag=i)
    done = {}
    while len(batch):
        for i, gen in batch.step():
            done[i] = gen
    return done


def test_the_lean_step_through_cache_growth_and_rows_leaving():
    """150 steps cross the in-place cache's growth twice; rows of different lengths leave at
    different steps (the cache is re-cut, then grows again): every row's tokens and scores are
    those of transformers' forward."""
    model = _tiny()
    requests = [GenerateRequest((5, 6, 7), 150, 3), GenerateRequest(tuple(range(10, 19)), 40, 3),
                GenerateRequest((20, 21, 22, 23, 24), 97, 3)]
    lean, reference = _generate(model, requests, True), _generate(model, requests, False)
    for i, r in enumerate(requests):
        assert len(lean[i].token_ids) == r.max_new_tokens  # 96 is never chosen here: no early stop
        assert lean[i].token_ids == reference[i].token_ids
        assert torch.allclose(lean[i].steps.logprob, reference[i].steps.logprob, atol=1e-5, rtol=0)
