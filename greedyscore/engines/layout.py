"""Weights laid out for decoding on a CPU, where a decode step runs as fast as the weights stream
from memory (each step multiplies a few row vectors by every weight matrix). torch's `linear` on
the [out, in] weight uses one core for one row; so, fastest first (benchmarks/RESULTS.md):

- NativeLinear (where engines/native/ measures its kernel faster than the layouts below): the
  weight packed in panels for the C kernel (a bfloat16 prefill through oneDNN's GEMM).
- SplitLinear (float32 otherwise): the transposed weight in column blocks, one `bmm`, a core each.
- PackedLinear (bfloat16 otherwise, on a CPU with bf16 instructions): oneDNN's packed weights.

Same products summed in other orders, so logits agree with the model as loaded to rounding.
"""

from __future__ import annotations

import torch
from torch import nn

BMM_ROWS = 16  # up to this many rows (decode steps of a batch) one bmm, a core per column block


class SplitLinear(nn.Module):
    """`nn.Linear`'s function with its weight stored as [parts, in, out/parts] (column blocks)."""

    def __init__(self, linear: nn.Linear, parts: int) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if self.out_features % parts:
            parts = 1
        self.parts = parts
        w_t = linear.weight.detach().t()  # [in, out]
        blocks = w_t.reshape(self.in_features, parts, self.out_features // parts).permute(1, 0, 2)
        self.weight_blocks = nn.Parameter(blocks.contiguous(), requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] > BMM_ROWS:  # a prefill: matrix products, each threaded by MKL itself
            y = torch.cat([rows @ w for w in self.weight_blocks], -1)
        else:
            y = torch.bmm(rows.expand(self.parts, *rows.shape), self.weight_blocks)  # [parts, rows, out/parts]
            y = y.view(self.out_features) if rows.shape[0] == 1 else y.permute(1, 0, 2).reshape(-1, self.out_features)
        y = y.view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def split_linears(model: nn.Module, parts: int | None = None) -> int:
    """Replace every nn.Linear of `model` in place, one column block per torch thread by default
    (a tied output layer gets its own copy, the embedding keeps the original); -> how many."""
    parts = parts or max(1, torch.get_num_threads())
    return _replace_linears(model, lambda linear: SplitLinear(linear, parts))


def _replace_linears(model: nn.Module, make, dtypes: tuple[torch.dtype, ...] | None = None) -> int:
    """Replace every plain nn.Linear of `model` (of these weight dtypes) by make(linear); -> how many."""
    swaps = [(parent, name) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.Linear and (dtypes is None or child.weight.dtype in dtypes)]
    for parent, name in swaps:  # one at a time: each old Linear is freed before the next is made
        setattr(parent, name, make(getattr(parent, name)))
    return len(swaps)


class PackedLinear(nn.Module):
    """`nn.Linear`'s function through oneDNN with its weight pre-packed for it: for bfloat16 with
    bf16 instructions, faster than `linear` on the plain weight (the bmm split gains nothing)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = nn.Parameter(torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1),
                                   requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)


def pack_linears(model: nn.Module) -> int:
    """Replace every nn.Linear of `model` in place by a PackedLinear; -> how many."""
    return _replace_linears(model, PackedLinear)


class NativeLinear(nn.Module):
    """`nn.Linear` whose products run in the C kernel (engines/native/) on the weight packed in
    panels for it, for any number of rows, in float32, returned in the input's dtype.

    The plain weight is dropped (a tied embedding keeps its own), except in bfloat16: there a
    prefill goes through oneDNN's bf16 GEMM (bf16 dot products beat the kernel's widened float32)."""

    def __init__(self, linear: nn.Linear, kernel) -> None:
        from .native import pack

        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = nn.Parameter(pack(linear.weight.detach()), requires_grad=False)
        self.bias = linear.bias
        bf16_gemm = linear.weight.dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
        self.plain = nn.Parameter(linear.weight.detach(), requires_grad=False) if bf16_gemm else None
        self.kernel = kernel

    @property
    def weight(self) -> torch.Tensor:
        """The [out, in] weight (a copy when only the packed one is kept)."""
        from .native import unpack

        return self.plain if self.plain is not None else unpack(self.packed, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.plain is not None and rows.shape[0] > GEMM_ROWS:
            return nn.functional.linear(x, self.plain, self.bias)  # a bfloat16 prefill: oneDNN's GEMM
        bias = None if self.bias is None else self.bias.float().contiguous()
        y = self.kernel.linear(rows.float().contiguous(), self.packed, bias, self.out_features)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)


GEMM_ROWS = 16  # beyond this many rows (a prefill) a bfloat16 NativeLinear uses oneDNN's GEMM


def native_linears(model: nn.Module, kernel) -> int:
    """Replace every float32 or bfloat16 nn.Linear of `model` in place by a NativeLinear; -> how many."""
    return _replace_linears(model, lambda linear: NativeLinear(linear, kernel), (torch.float32, torch.bfloat16))


def _own_memory(model: nn.Module) -> None:
    """Copy the tensors the layout left (embedding, norms) out of the loaded file: they are views
    of the memory-mapped safetensors file, whose pages packing made resident and which stay so
    while any view lives."""
    for module in model.modules():
        if isinstance(module, NativeLinear):
            continue
        for param in module.parameters(recurse=False):
            param.data = param.data.clone()
        for name, buf in list(module.named_buffers(recurse=False)):
            module._buffers[name] = buf.clone()


def cpu_layout(model: nn.Module, precision: str) -> str:
    """Lay the model's Linears out for decoding on this CPU: the C kernel where engines/native/
    chooses it for this precision, else `torch_layout`; -> which (for the score source line)."""
    from .native import accelerator

    k = accelerator(precision) if precision in ("float32", "bfloat16") else None
    if k is None:
        return torch_layout(model, precision)
    native_linears(model, k)
    _own_memory(model)
    if precision == "float32":
        from .attention import use_kernel_attention

        use_kernel_attention(model, k)  # a float32 prefill's attention too
    return "native"


def torch_layout(model: nn.Module, precision: str) -> str:
    """The layout without the C kernel (what its gate times it against): float32 in column blocks
    (SplitLinear), bfloat16 packed for oneDNN where the CPU has bf16 instructions (PackedLinear),
    otherwise as loaded; -> which."""
    from ..cpu import bf16_instructions

    if precision == "float32":
        split_linears(model)
        return "split"
    if precision == "bfloat16" and bf16_instructions():
        pack_linears(model)
        return "packed"
    return "as loaded"
