"""The engine's CPU weight layout (every Linear transposed, in column blocks) computes the model as loaded."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from greedyscore.engines.layout import SplitLinear
from greedyscore.types import Message


def test_split_weights_give_the_logits_of_the_model_as_loaded(engine):
    assert any(isinstance(m, SplitLinear) and m.parts > 1 for m in engine.model.modules())
    assert not any(type(m) is torch.nn.Linear for m in engine.model.modules())
    plain = AutoModelForCausalLM.from_pretrained(engine.source, dtype=torch.float32).eval()
    ids = torch.tensor([engine.prompt_ids([Message("user", "你好, what is 2+2?")])])
    with torch.inference_mode():
        outs = []
        for model in (engine.model, plain):
            cache = DynamicCache(config=model.config)
            prefill = model(input_ids=ids, cache=cache, use_cache=True).logits[0]
            step = model(input_ids=torch.tensor([[42]]), cache=cache, use_cache=True).logits[0, -1]
            outs.append((prefill, step))
    for mine, theirs in zip(*outs):
        assert torch.allclose(mine, theirs, atol=1e-3, rtol=0)
        assert torch.equal(mine.argmax(-1), theirs.argmax(-1))
    tied = plain.get_output_embeddings().weight
    assert torch.equal(engine.model.lm_head.weight_t, tied.t())  # the output layer's own copy, same values


def test_a_split_linear_computes_its_linear_for_one_row_a_batch_and_odd_widths():
    torch.manual_seed(0)
    for out, parts in ((192, 2), (192, 3), (7, 2)):  # 7 columns do not split in 2: one block
        plain = torch.nn.Linear(64, out, bias=True)
        split = SplitLinear(plain, parts)
        assert split.parts == (1 if out % parts else parts)
        for shape in ((1, 1, 64), (3, 5, 64), (64,), (2, 40, 64)):  # the last: more rows than one bmm takes
            x = torch.randn(shape)
            with torch.no_grad():
                assert torch.allclose(split(x), plain(x), atol=1e-5, rtol=0)
