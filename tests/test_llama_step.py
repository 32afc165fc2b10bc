"""The lean decode step computes what transformers' forward computes, row by row, padding included."""

from __future__ import annotations

import pytest
import torch
from kernel_variants import MARCHES, built
from threads import torch_threads
from transformers import LlamaConfig, LlamaForCausalLM

from greedyscore.engines.base import GenerateRequest
from greedyscore.engines.decode import DecodeBatch
from greedyscore.engines.llama_step import LlamaStep, NativeStep
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
    prompts = [engine.tokenizer.prompt_ids([Message("user", text)]) for text in
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
    cfg = LlamaConfig(**{"vocab_size": 97, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, **extra})
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


def _torch_ops(batch: DecodeBatch) -> DecodeBatch:
    """The batch's lean step with its C path off: the torch operations of LlamaStep.__call__."""
    batch.fast_step.native = None
    return batch


def test_float32_llamas_take_the_c_step_and_it_gives_the_torch_steps_logits(engine):
    """kernels/llama_step.c against the same step in torch operations (and both against
    transformers above): the embedded model, and random ones whose head size has a tail (18)."""
    assert DecodeBatch(engine.model, engine.info.stop_ids).fast_step.native is not None
    chat = [engine.tokenizer.prompt_ids([Message("user", text)]) for text in ("Hi", "Name three rivers of Europe.")]
    stop = frozenset({engine.model.config.vocab_size - 1})
    for model, prompts, atol in ((engine.model, chat, 1e-4), (_tiny(), [[5, 6, 7], [8, 9, 10, 11, 12]], 1e-5),
                                 (_tiny(hidden_size=72), [[1, 2], [3, 4, 5, 6, 7, 8, 9]], 1e-5)):
        c_step = _steps(model, stop, prompts, True, 10)
        batch = _torch_ops(DecodeBatch(model, stop))
        for p in prompts:
            batch.join(GenerateRequest(tuple(p), 10, 3))
        for mine in c_step:
            batch.step()
            assert torch.allclose(mine, batch.logits, atol=atol, rtol=0)
            assert torch.equal(mine.argmax(-1), batch.logits.argmax(-1))


@pytest.mark.parametrize("march", MARCHES)
def test_every_kernel_variant_that_builds_takes_the_c_step_to_the_torch_steps_logits(march):
    model = _tiny(hidden_size=72)
    stop = frozenset({96})
    mine, theirs = DecodeBatch(model, stop), _torch_ops(DecodeBatch(model, stop))
    mine.fast_step.native = NativeStep(model, built(march))
    for batch in (mine, theirs):
        for p in ([1, 2], [3, 4, 5, 6, 7, 8, 9]):
            batch.join(GenerateRequest(tuple(p), 10, 3))
    for _ in range(9):
        mine.step()
        theirs.step()
        assert torch.allclose(mine.logits, theirs.logits, atol=1e-5, rtol=0)


def test_the_c_step_gives_a_row_the_same_bits_alone_in_a_padded_batch_and_with_one_or_two_threads():
    """Padding is skipped, not masked with -inf, and every product sums in one fixed order: a
    reply's tokens and scores do not depend on who shares its batch, nor a step's logits on the
    thread count (prefills, torch's GEMMs, may differ by thread count: the step is fed one cache)."""
    model = _tiny(hidden_size=72)
    requests = [GenerateRequest((5, 6, 7), 30, 3), GenerateRequest(tuple(range(10, 29)), 30, 3),
                GenerateRequest((20, 21, 22, 23, 24), 12, 3)]
    together = _generate(model, requests, True)
    for i, r in enumerate(requests):
        alone = _generate(model, [r], True)[0]
        assert alone.token_ids == together[i].token_ids
        assert torch.equal(alone.steps.logprob, together[i].steps.logprob)
        assert torch.equal(alone.steps.top_logprobs, together[i].steps.top_logprobs)
    batch = DecodeBatch(model, frozenset({96}))
    for r in requests:
        batch.join(r)
    for _ in range(3):
        batch.step()
    col = batch.width
    batch._reserve(col + 1)
    tokens, positions = torch.tensor([1, 2, 3]), torch.tensor([r.length for r in batch.rows])
    mask = torch.cat([batch.mask, torch.ones(3, 1, dtype=torch.long)], 1)
    logits = []
    for n in (1, 2):
        with torch_threads(n):
            keys, values = [k.clone() for k in batch.keys], [v.clone() for v in batch.values]
            logits.append(batch.fast_step(tokens, positions, mask, keys, values, col))
    assert torch.equal(logits[0], logits[1])


def test_the_c_step_refuses_a_cache_it_cannot_address():
    model = _tiny()
    step = LlamaStep.of(model)
    assert step.native is not None
    keys = [torch.zeros(1, 2, 4, 16) for _ in range(2)]
    tokens, positions = torch.tensor([3]), torch.tensor([4])
    with pytest.raises(ValueError, match="keys/values"):
        step(tokens, positions, None, keys, [k.clone() for k in keys], 4)  # no room at col 4
    with pytest.raises(ValueError, match="keys/values"):
        step(tokens, positions, None, keys, [torch.zeros(1, 2, 4, 16).transpose(1, 2).contiguous()
                                             .transpose(1, 2) for _ in range(2)], 2)  # another layout
    with pytest.raises(ValueError, match="mask"):
        step(tokens, positions, torch.ones(1, 2), keys, [k.clone() for k in keys], 2)
    with pytest.raises(ValueError, match="cos/sin"):  # a position per token, or C reads past cos/sin
        step(tokens, torch.tensor([4, 5]), None, keys, [k.clone() for k in keys], 2)
    assert step(tokens, positions, None, keys, [k.clone() for k in keys], 2).shape == (1, 97)
