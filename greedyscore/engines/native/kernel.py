"""The loaded kernel library (ctypes) and the packed weight layout it reads."""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch


class Kernel:
    """The loaded library: y = x @ w.T + bias for float32 or bfloat16 weights packed by `pack`,
    float32 rows; a whole Llama decode step (`llama_step`, `llama_scratch`: engines/llama_step.py
    calls them); a prefill's causal attention (`causal_attention`)."""

    def __init__(self, lib: ctypes.CDLL, path: Path, march: str = "native") -> None:
        self.path, self.march = path, march
        self._f32, self._bf16 = lib.gs_linear_f32, lib.gs_linear_bf16
        for f in (self._f32, self._bf16):
            f.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3
            f.restype = None
        self.llama_step = lib.gs_llama_step
        self.llama_step.argtypes = [ctypes.c_void_p] * 11
        self.llama_step.restype = None
        self.llama_scratch = lib.gs_llama_scratch
        self.llama_scratch.argtypes = [ctypes.c_void_p]
        self.llama_scratch.restype = ctypes.c_int64
        self._attention = lib.gs_causal_attention
        self._attention.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_float]
        self._attention.restype = ctypes.c_int64
        if lib.gs_panel() != PANEL:
            raise OSError(f"{path}: panels of {lib.gs_panel()} outputs, this code packs {PANEL}")

    def __deepcopy__(self, memo: dict) -> Kernel:
        return self  # one loaded library per process: copies of a model share it

    def __reduce__(self) -> tuple:
        from .build import kernel

        return kernel, (self.march,)  # a pickled model finds (or builds) the kernel where it is loaded

    def linear(self, x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, n: int) -> torch.Tensor:
        """x [rows, k] float32 contiguous, packed: a [n, k] weight as `pack` lays it out (float32
        or bfloat16), bias [n] float32 or None -> [rows, n] float32. The call releases the GIL."""
        rows, k = x.shape
        # the C code trusts these: a wrong dtype, shape or stride would read out of bounds
        if packed.dtype not in (torch.float32, torch.bfloat16) or packed.shape != packed_shape(n, k) \
                or not packed.is_contiguous():
            raise ValueError(f"kernel weight: {tuple(packed.shape)} {packed.dtype}, want {packed_shape(n, k)} "
                             f"(`pack` of a [{n}, {k}] weight)")
        if x.dtype != torch.float32 or not x.is_contiguous():
            raise ValueError("kernel rows must be contiguous float32")
        if any(t is not None and t.device.type != "cpu" for t in (x, packed, bias)):
            raise ValueError("the CPU kernel needs CPU tensors")
        if bias is not None and (bias.dtype != torch.float32 or bias.shape != (n,) or not bias.is_contiguous()):
            raise ValueError("kernel bias must be contiguous float32 of the output width")
        y = torch.empty(rows, n, dtype=torch.float32)
        f = self._bf16 if packed.dtype == torch.bfloat16 else self._f32
        f(x.data_ptr(), packed.data_ptr(), 0 if bias is None else bias.data_ptr(), y.data_ptr(), rows, k, n)
        return y

    def causal_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """softmax(q k^T * scale, causal) v for one sequence: q [heads, n, d], k and v
        [kv_heads, n, d] float32 CPU tensors with unit stride along d (any other strides, e.g.
        transformers' transposed views), heads a multiple of kv_heads, d of 16 -> [n, heads, d]."""
        heads, n, d = q.shape
        kv = k.shape[0]
        if k.shape != (kv, n, d) or v.shape != (kv, n, d) or kv < 1 or heads % kv or d % 16 or n < 1:
            raise ValueError(f"attention shapes q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)}: want "
                             "[heads, n, d] and [kv_heads, n, d], heads a multiple of kv_heads, d of 16")
        if any(t.dtype != torch.float32 or t.device.type != "cpu" or t.stride(2) != 1 for t in (q, k, v)):
            raise ValueError("the attention kernel needs float32 CPU tensors, unit stride along the head size")
        out = torch.empty(n, heads, d, dtype=torch.float32)
        dims = (ctypes.c_int64 * 10)(n, heads, kv, d, q.stride(1), q.stride(0), k.stride(1), k.stride(0),
                                     v.stride(1), v.stride(0))
        rc = self._attention(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), dims, scale)
        if rc == -2:
            raise MemoryError(f"attention over {n} positions: out of memory for its scratch")
        if rc:
            raise ValueError(f"attention kernel refused dims {list(dims)}")
        return out


PANEL = 32  # outputs per panel: GS_PANEL in kernels/linear.h


def packed_shape(n: int, k: int) -> tuple[int, int, int]:
    return (-(-n // PANEL), k, PANEL)


def pack(weight: torch.Tensor) -> torch.Tensor:
    """A [n, k] weight laid out for the kernel: [ceil(n / 32), k, 32], panel p holding outputs
    32p..32p+31 for each k contiguously (the last panel padded with zeros); same dtype."""
    n, k = weight.shape
    rows = packed_shape(n, k)[0] * PANEL
    padded = weight.new_zeros(rows, k)
    padded[:n] = weight
    return padded.view(rows // PANEL, PANEL, k).transpose(1, 2).contiguous()


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The [n, k] weight of `pack`'s layout (a copy)."""
    return packed.transpose(1, 2).reshape(-1, packed.shape[1])[:n].clone(memory_format=torch.contiguous_format)
