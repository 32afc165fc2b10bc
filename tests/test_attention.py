"""The prefill's causal attention kernel against a float64 softmax written out here, and a model
pointed at it against the same model on torch's SDPA: what the kernel takes it computes, what it
does not take (masks, a cached prefix, other dtypes) goes to SDPA untouched."""

from __future__ import annotations

import pytest
import torch
from kernel_variants import MARCHES, built
from threads import torch_threads
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from greedyscore.engines import attention, native
from greedyscore.engines.layout import cpu_layout


@pytest.fixture(scope="module", params=MARCHES)
def kernel(request):
    """Every variant that builds here: the AVX2 build's scalar exp and bitwise max too."""
    return built(request.param)


def _reference(q, k, v, scale):
    """float64 causal attention, row by row: softmax over the keys at or before each position."""
    heads, n, d = q.shape
    group = heads // k.shape[0]
    out = torch.empty(n, heads, d, dtype=torch.float64)
    for h in range(heads):
        kh, vh = k[h // group].double(), v[h // group].double()
        for t in range(n):
            s = (kh[: t + 1] @ q[h, t].double()) * scale
            p = torch.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ vh[: t + 1]
    return out


def _assert_close(got, q, k, v, scale):
    """Within 2e-6 of the float64 reference, or of twice SDPA's own error where the scores' float32
    rounding alone moves the result more (scores of hundreds)."""
    want = _reference(q, k, v, scale)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True, scale=scale)
    sdpa_error = (sdpa.transpose(0, 1).double() - want).abs().max().item()
    assert got.shape == want.shape and got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got.double() - want).abs().max().item() <= max(2e-6, 2 * sdpa_error)


def _qkv(n, heads, kv, d, seed=0, spread=1.0):
    """q as transformers hands it over (a [heads, n, d] view of [n, heads, d]), k/v contiguous."""
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(n, heads, d, generator=g) * spread).transpose(0, 1)
    return q, torch.randn(kv, n, d, generator=g), torch.randn(kv, n, d, generator=g)


@pytest.mark.parametrize(("n", "heads", "kv", "d"), [(1, 9, 3, 64), (2, 2, 1, 16), (7, 4, 2, 32), (8, 9, 3, 64),
                                                     (33, 4, 4, 128), (70, 2, 1, 80), (300, 9, 3, 64)])
def test_the_kernel_is_causal_softmax_attention(kernel, n, heads, kv, d):
    q, k, v = _qkv(n, heads, kv, d, seed=n)
    _assert_close(kernel.causal_attention(q, k, v, d**-0.5), q, k, v, d**-0.5)


def test_scores_far_apart_underflow_to_zero_weights_as_in_float64(kernel):
    q, k, v = _qkv(40, 2, 1, 32, spread=30.0)  # score gaps of hundreds: most weights underflow
    _assert_close(kernel.causal_attention(q, k, v, 32**-0.5), q, k, v, 32**-0.5)


def test_the_weights_themselves_are_float64s_softmax_to_float32_precision(kernel):
    """Values one-hot per key: the output is each query's softmax weights, which hold the exp to
    its ~1 ulp (a weighted mean of random values would average an exp's error away)."""
    n, d = 48, 64
    q, k, _ = _qkv(n, 2, 1, d, spread=0.1)  # scores of ~1: their own rounding stays below the exp's
    v = torch.eye(n, d).unsqueeze(0)
    got = kernel.causal_attention(q, k, v, 0.7)[..., :n].double()  # [n, heads, keys]
    want = _reference(q, k, v, 0.7)[..., :n]
    assert torch.equal(got == 0, want == 0)  # nothing from a later key
    assert torch.allclose(got, want, rtol=1e-6, atol=0)


def test_any_strides_along_positions_and_heads(kernel):
    q, k, v = _qkv(50, 4, 2, 32)
    base = kernel.causal_attention(q.contiguous(), k, v, 0.2)
    kt = k.transpose(0, 1).contiguous().transpose(0, 1)  # [kv, n, d] view of an [n, kv, d] tensor
    assert torch.equal(kernel.causal_attention(q, kt, v.transpose(0, 1).contiguous().transpose(0, 1), 0.2), base)


def test_the_result_does_not_depend_on_the_thread_count(kernel):
    q, k, v = _qkv(257, 9, 3, 64)
    with torch_threads(1):
        one = kernel.causal_attention(q, k, v, 0.125)
    assert torch.equal(one, kernel.causal_attention(q, k, v, 0.125))


def test_the_kernel_refuses_what_it_cannot_read(kernel):
    q, k, v = _qkv(10, 4, 2, 32)
    for bad in [(q, k, v[:, :9]), (q[:3], k, v), (q[..., :24], k[..., :24], v[..., :24]), (q.double(), k, v),
                (q, k.transpose(1, 2).contiguous().transpose(1, 2), v)]:
        with pytest.raises(ValueError):
            kernel.causal_attention(*bad, 0.1)


def _tiny(seed=0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=96, intermediate_size=128, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def test_a_laid_out_float32_model_prefills_through_the_kernel_and_falls_back_to_sdpa(monkeypatch):
    model, plain = _tiny(), _tiny()
    assert cpu_layout(model, "float32") == "native"
    assert model.config._attn_implementation == attention.NAME and plain.config._attn_implementation == "sdpa"
    calls = []
    real = native.Kernel.causal_attention
    monkeypatch.setattr(native.Kernel, "causal_attention", lambda self, *a: calls.append(a[0].shape) or real(self, *a))
    ids = torch.randint(0, 97, (1, 150), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        mine_cache, theirs_cache = DynamicCache(config=model.config), DynamicCache(config=plain.config)
        mine = model(input_ids=ids, cache=mine_cache, use_cache=True).logits
        theirs = plain(input_ids=ids, cache=theirs_cache, use_cache=True).logits
        assert calls == [(6, 150, 16)] * 2  # both layers' prefill
        assert torch.allclose(mine, theirs, atol=1e-5, rtol=0)
        calls.clear()
        # a cached prefix (teacher forcing after the prompt) and a padded batch: SDPA's
        more = ids[:, :20]
        assert torch.allclose(model(input_ids=more, cache=mine_cache, use_cache=True).logits,
                              plain(input_ids=more, cache=theirs_cache, use_cache=True).logits, atol=1e-5, rtol=0)
        batch = torch.cat([ids[:, :30], ids[:, 30:60]])
        mask = torch.ones_like(batch)
        mask[0, :7] = 0
        assert torch.allclose(model(input_ids=batch, attention_mask=mask).logits[mask.bool()],
                              plain(input_ids=batch, attention_mask=mask).logits[mask.bool()], atol=1e-5, rtol=0)
        assert calls == []


def test_a_bfloat16_model_keeps_sdpa():
    model = _tiny().to(torch.bfloat16)
    cpu_layout(model, "bfloat16")
    assert model.config._attn_implementation == "sdpa"
