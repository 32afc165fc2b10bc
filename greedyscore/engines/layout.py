"""Weights laid out for decoding on a CPU: every Linear keeps its weight transposed, in column halves.

Why: a decode step multiplies one row vector by each weight matrix, so its speed is the speed at
which the weights stream from memory. torch's MKL reads them at ~10 GB/s here for
`linear(x, W)` on the [out, in] weight and does not use a second core for one row; `x @ W.T`
with W.T stored contiguous ([in, out]) reads ~14 GB/s. Stored as [parts, in, out/parts] and
multiplied with one `bmm`, each core streams its own half of the columns: ~21 GB/s, 1.35x the
whole decode step over the transposed layout (benchmarks/RESULTS.md). Same products, summed in
another order: logits agree with the model as loaded to ~1e-5.
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

    @property
    def weight_t(self) -> torch.Tensor:
        """The [in, out] weight (a copy), as `x @ weight_t` would use it."""
        return self.weight_blocks.permute(1, 0, 2).reshape(self.in_features, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] > BMM_ROWS:  # a prefill: matrix products, each threaded by MKL itself (~1.2x the bmm)
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
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.Linear]
    for parent, name, child in swaps:
        setattr(parent, name, SplitLinear(child, parts))
    return len(swaps)


class PackedLinear(nn.Module):
    """`nn.Linear`'s function through oneDNN with its weight pre-packed (reordered) for it.

    Why: for bfloat16 on a CPU with bf16 instructions, oneDNN's packed kernels read the weights
    at ~17 GB/s here against ~13 for `linear` on the plain weight (and the bmm split gains nothing)."""

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
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is nn.Linear]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear(child))
    return len(swaps)
