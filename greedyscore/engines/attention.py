"""A prompt's causal attention through the C kernel (kernels/attention.c); all else through torch's SDPA.

Why: over a long prompt attention is a large part of a float32 CPU prefill, and torch's flash kernel is
slower than ours (benchmarks/RESULTS.md). The kernel takes only what it computes exactly: one unpadded
float32 sequence attending causally to itself; every other call goes to SDPA, unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "greedyscore_cpu"
# attention options some models pass that change the result: the kernel computes none of them
_UNSUPPORTED = ("softcap", "sliding_window", "position_bias", "s_aux")


def kernel_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [1, heads, n, d], key/value
    [1, kv_heads, n, d] -> ([1, n, heads, d], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kernel = getattr(module, "greedyscore_kernel", None)
    batch, heads, n, d = query.shape
    own = (kernel is not None and batch == 1 and n > 1 and attention_mask is None and not dropout
           and (is_causal if is_causal is not None else getattr(module, "is_causal", True))
           and key.shape[0] == 1 and key.shape[2] == n and value.shape == key.shape and d % 16 == 0
           and heads % key.shape[1] == 0 and all(kwargs.get(k) is None for k in _UNSUPPORTED)
           and all(t.dtype == torch.float32 and t.device.type == "cpu" and t.stride(-1) == 1
                   for t in (query, key, value)))
    if not own:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    scale = scaling if scaling is not None else d**-0.5
    return kernel.causal_attention(query[0], key[0], value[0], scale).unsqueeze(0), None


def use_kernel_attention(model: torch.nn.Module, kernel) -> bool:
    """Point a model that uses SDPA at `kernel_attention` (its attention modules get `kernel`); -> done."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(NAME, kernel_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the masks SDPA gets, so what falls back is unchanged
    for module in model.modules():
        if hasattr(module, "is_causal") and hasattr(module, "scaling"):
            module.greedyscore_kernel = kernel
    config._attn_implementation = NAME
    return True
