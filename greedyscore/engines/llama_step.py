"""One decode step of a Llama-architecture model, without transformers' per-call machinery.

Why: on a CPU a small model's decode step is short (tens of ms), and transformers' forward adds
a fixed cost to it: mask building, cache objects, the attention dispatch and ~30 module calls per
layer (~1/4 of the step for the embedded 135M model, benchmarks/RESULTS.md). This step runs the
same computation from the model's own modules and weights, in the same order and dtypes as
`modeling_llama` (RMSNorm in float32, rotary embedding from the same inverse frequencies, SDPA
with the grouped heads packed as transformers does for one query token), so its logits are the
model's to float rounding (transformers' SDPA attention; a model loaded with another attention
implementation keeps the forward); tests/test_llama_step.py holds it to transformers' forward.

Only decode steps run here (one token per row): prefill stays transformers' forward. Models
outside the plain Llama architecture (biases, scaled rotary embeddings, other attention) get
None from `LlamaStep.of` and keep transformers' forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class LlamaStep:
    def __init__(self, model: Any) -> None:
        cfg = model.config
        inner = model.model
        self.embed = inner.embed_tokens
        self.layers = [(layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
                        layer.self_attn.q_proj.forward, layer.self_attn.k_proj.forward,
                        layer.self_attn.v_proj.forward, layer.self_attn.o_proj.forward,
                        layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
                        layer.mlp.gate_proj.forward, layer.mlp.up_proj.forward, layer.mlp.down_proj.forward)
                       for layer in inner.layers[: cfg.num_hidden_layers]]
        self.norm = (inner.norm.weight, inner.norm.variance_epsilon)
        self.lm_head = model.lm_head.forward
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.inv_freq = inner.rotary_emb.inv_freq.float()
        self.rope_scale = float(inner.rotary_emb.attention_scaling)

    @classmethod
    def of(cls, model: Any) -> LlamaStep | None:
        """A step for this model, or None where it is not a plain Llama (transformers' forward then)."""
        cfg = getattr(model, "config", None)
        if type(model).__name__ != "LlamaForCausalLM" or cfg is None:
            return None
        rope = getattr(cfg, "rope_parameters", None) or {}
        plain = (getattr(cfg, "model_type", "") == "llama" and rope.get("rope_type", "default") == "default"
                 and not getattr(cfg, "attention_bias", False) and not getattr(cfg, "mlp_bias", False)
                 and getattr(cfg, "hidden_act", "") == "silu" and getattr(cfg, "pretraining_tp", 1) == 1
                 and getattr(cfg, "_attn_implementation", "sdpa") == "sdpa")
        return cls(model) if plain else None

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
                 keys: list[torch.Tensor], values: list[torch.Tensor], col: int) -> torch.Tensor:
        """tokens [rows], positions [rows], mask [rows, col + 1] (1 = a real token; None: no
        padding), keys/values per layer [rows, kv_heads, capacity > col, head_dim] whose first
        `col` positions are the cache: this step's keys and values are written at `col`, in place;
        -> logits [rows, vocab]."""
        rows = tokens.shape[0]
        h = self.embed(tokens)  # [rows, hidden]
        freqs = positions[:, None].float() * self.inv_freq  # as LlamaRotaryEmbedding.forward
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scale).to(h.dtype).view(rows, 1, 1, -1)
        sin = (emb.sin() * self.rope_scale).to(h.dtype).view(rows, 1, 1, -1)
        attn_mask = None if mask is None else mask.bool()[:, None, None, :]
        group = self.heads // self.kv_heads
        for i, (w1, eps1, q_proj, k_proj, v_proj, o_proj, w2, eps2, gate, up, down) in enumerate(self.layers):
            x = _rms_norm(h, w1, eps1)
            q = q_proj(x).view(rows, self.heads, 1, self.head_dim)
            k = k_proj(x).view(rows, self.kv_heads, 1, self.head_dim)
            v = v_proj(x).view(rows, self.kv_heads, 1, self.head_dim)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys[i][:, :, col] = k[:, :, 0]
            values[i][:, :, col] = v[:, :, 0]
            # one query token: its grouped heads become the queries of their key/value head
            out = F.scaled_dot_product_attention(q.view(rows, self.kv_heads, group, self.head_dim),
                                                 keys[i][:, :, : col + 1], values[i][:, :, : col + 1],
                                                 attn_mask=attn_mask, scale=self.scaling)
            h = h + o_proj(out.reshape(rows, self.heads * self.head_dim))
            x = _rms_norm(h, w2, eps2)
            h = h + down(F.silu(gate(x)) * up(x))
        return self.lm_head(_rms_norm(h, *self.norm))


def _rms_norm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm.forward: float32 statistics, the weight applied in the input's dtype."""
    x = h.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(h.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
