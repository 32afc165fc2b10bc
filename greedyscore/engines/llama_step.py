"""One decode step of a Llama-architecture model, without transformers' per-call machinery.

Why: on a CPU a small model's decode step is short, and transformers' forward adds a fixed cost
to it (mask building, cache objects, attention dispatch, ~30 module calls per layer). This step
runs the same computation from the model's own modules, in `modeling_llama`'s order and dtypes
(RMSNorm in float32, the same rotary frequencies, SDPA with grouped heads packed as for one query
token), so its logits are the model's to float rounding (tests/test_llama_step.py holds it so).

Where engines/native/ chooses the C kernel, the whole step is one call into kernels/llama_step.c
(`NativeStep`, float32; bfloat16 weights widened as read). Only decode steps run here: prefill,
and models outside the plain Llama architecture (`LlamaStep.of` -> None), keep transformers' forward.
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import NAME as KERNEL_ATTENTION
from .layout import NativeLinear

_FIND = object()


class LlamaStep:
    def __init__(self, model: Any, kernel: Any = _FIND) -> None:
        """kernel: the C kernel to run the step in (None: torch operations); by default the one
        `NativeStep.of` finds for the model."""
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
        self.head_dim = _head_dim(cfg)
        self.scaling = self.head_dim**-0.5
        self.inv_freq = inner.rotary_emb.inv_freq.float()
        self.rope_scale = float(inner.rotary_emb.attention_scaling)
        if kernel is _FIND:
            self.native = NativeStep.of(model)
        else:
            self.native = None if kernel is None else NativeStep(model, kernel)

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
                 and getattr(cfg, "_attn_implementation", "sdpa") in ("sdpa", KERNEL_ATTENTION))
        return cls(model) if plain else None

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
                 keys: list[torch.Tensor], values: list[torch.Tensor], col: int) -> torch.Tensor:
        """tokens [rows], positions [rows], mask [rows, col + 1] (1 = a real token; None: no
        padding), keys/values per layer [rows, kv_heads, capacity > col, head_dim] whose first
        `col` positions are the cache: this step's keys and values are written at `col`, in place;
        -> logits [rows, vocab]."""
        rows = tokens.shape[0]
        h = self.embed(tokens)  # [rows, hidden]
        if self.native is not None:
            return self.native(h, *self.rotary(positions, torch.float32), mask, keys, values, col)
        cos, sin = self.rotary(positions, h.dtype)
        cos, sin = cos.view(rows, 1, 1, -1), sin.view(rows, 1, 1, -1)
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

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [rows, head_dim] of each row's position, as LlamaRotaryEmbedding.forward makes them."""
        freqs = positions[:, None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.rope_scale).to(dtype), (emb.sin() * self.rope_scale).to(dtype)


class NativeStep:
    """A Llama decode step's layers, final norm and output layer in one C call (kernels/llama_step.c),
    in float32 on matrix weights packed for the kernel (pointers taken here: the model's weights must
    not be replaced afterwards). Keys and values are float32 whatever the model's dtype."""

    DIMS = 12  # the C side's dims array

    def __init__(self, model: Any, kernel: Any) -> None:
        cfg, inner = model.config, model.model
        self.kernel = kernel
        self.head_dim = _head_dim(cfg)
        self.shape = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                      self.head_dim, cfg.intermediate_size, model.lm_head.out_features)
        weights: list[torch.Tensor] = []
        eps: list[float] = []
        for layer in inner.layers[: cfg.num_hidden_layers]:
            q, k, v, o, gate, up, down = map(_packed, _matrices(layer))
            weights += [_f32(layer.input_layernorm.weight), q, k, v, o, _f32(layer.post_attention_layernorm.weight),
                        gate, up, down]
            eps += [layer.input_layernorm.variance_epsilon, layer.post_attention_layernorm.variance_epsilon]
        weights += [_f32(inner.norm.weight), _packed(model.lm_head)]
        eps.append(inner.norm.variance_epsilon)
        self.bf16 = weights[-1].dtype == torch.bfloat16
        # detached: a later .to()/.float() of the model swaps its Parameters' data, these keep the storage
        self._weights = [w.detach() for w in weights]  # kept alive: the C side holds their addresses
        self._pointers = (ctypes.c_void_p * len(weights))(*[w.data_ptr() for w in weights])
        self.scaling = self.head_dim**-0.5  # as LlamaAttention: after the norms' epsilons
        self._eps = torch.tensor([*eps, self.scaling], dtype=torch.float32)

    @classmethod
    def of(cls, model: Any) -> NativeStep | None:
        """The C step where the matrix weights are on the CPU, all float32 or all bfloat16, and the
        kernel is the model's: its NativeLinears' (the layout chose it), or for plain Linears (as
        in tests' small models: packed copies) the one engines/native/ chooses for their dtype."""
        cfg = model.config
        if _head_dim(cfg) % 2 or cfg.num_attention_heads % cfg.num_key_value_heads \
                or len(model.model.layers) < cfg.num_hidden_layers:
            return None
        mats = [m for layer in model.model.layers for m in _matrices(layer)] + [model.lm_head]
        if not all(isinstance(m, (nn.Linear, NativeLinear)) for m in mats):
            return None  # another layout (SplitLinear, PackedLinear: the kernel was not chosen)
        tensors = [m.packed if isinstance(m, NativeLinear) else m.weight for m in mats]
        dtype = tensors[0].dtype
        if any(w.dtype != dtype or w.device.type != "cpu" for w in tensors) \
                or dtype not in (torch.float32, torch.bfloat16):
            return None
        laid_out = [m.kernel for m in mats if isinstance(m, NativeLinear)]
        if laid_out:
            return cls(model, laid_out[0])
        from .native import accelerator

        kernel = accelerator(str(dtype).removeprefix("torch."))
        return None if kernel is None else cls(model, kernel)

    def __call__(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                 keys: list[torch.Tensor], values: list[torch.Tensor], col: int) -> torch.Tensor:
        """h [rows, hidden] the tokens' embeddings, cos/sin [rows, head_dim]; the rest as
        LlamaStep.__call__ -> logits [rows, vocab] float32."""
        layers, hidden, heads, kv_heads, head_dim, inter, vocab = self.shape
        rows = h.shape[0]
        k0 = keys[0]
        # the C code trusts these: a wrong shape, stride or dtype would write out of bounds
        want = (rows, kv_heads, k0.shape[2], head_dim)
        if (k0.shape[2] <= col or len(keys) != layers or len(values) != layers
                or any(t.shape != want or t.stride() != k0.stride() or t.dtype != torch.float32
                       for t in (*keys, *values)) or k0.stride()[2:] != (head_dim, 1)):
            raise ValueError(f"native step: keys/values must be float32 [rows, kv_heads, > col, head_dim] "
                             f"with one layout, got {tuple(k0.shape)} {k0.stride()} at col {col}")
        if h.shape != (rows, hidden) or cos.shape != (rows, head_dim) or sin.shape != (rows, head_dim):
            raise ValueError(f"native step: h {tuple(h.shape)}, cos/sin {tuple(cos.shape)} for {rows} rows")
        tensors = [h, cos, sin, *keys, *values] + ([] if mask is None else [mask])
        if any(t.device.type != "cpu" for t in tensors):
            raise ValueError("native step: every tensor must be on the CPU")
        h = h.to(torch.float32).contiguous().clone()
        if cos.dtype != torch.float32 or sin.dtype != torch.float32:
            raise ValueError("native step: cos/sin must be float32")
        cos, sin = cos.contiguous(), sin.contiguous()
        dims = (ctypes.c_int64 * self.DIMS)(rows, layers, hidden, heads, kv_heads, head_dim, inter, vocab, col,
                                            k0.stride(0), k0.stride(1), int(self.bf16))
        if mask is not None:
            mask = mask.to(torch.uint8).contiguous()
            if mask.shape != (rows, col + 1):
                raise ValueError(f"native step: mask {tuple(mask.shape)} for {rows} rows at col {col}")
        scratch = torch.empty(self.kernel.llama_scratch(dims), dtype=torch.float32)
        logits = torch.empty(rows, vocab, dtype=torch.float32)
        key_ptrs = (ctypes.c_void_p * layers)(*[t.data_ptr() for t in keys])
        value_ptrs = (ctypes.c_void_p * layers)(*[t.data_ptr() for t in values])
        self.kernel.llama_step(dims, self._pointers, self._eps.data_ptr(), h.data_ptr(), cos.data_ptr(),
                               sin.data_ptr(), None if mask is None else mask.data_ptr(), key_ptrs, value_ptrs,
                               scratch.data_ptr(), logits.data_ptr())
        return logits


def _head_dim(cfg: Any) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _matrices(layer: nn.Module) -> tuple[nn.Module, ...]:
    """A decoder layer's projections, in the C step's order: q, k, v, o, gate, up, down."""
    att, mlp = layer.self_attn, layer.mlp
    return att.q_proj, att.k_proj, att.v_proj, att.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous()


def _packed(linear: nn.Module) -> torch.Tensor:
    """The module's weight as the kernel reads it: a NativeLinear's own, or a packed copy."""
    from .native import pack

    return linear.packed if isinstance(linear, NativeLinear) else pack(linear.weight.detach())


def _rms_norm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm.forward: float32 statistics, the weight applied in the input's dtype."""
    x = h.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(h.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
