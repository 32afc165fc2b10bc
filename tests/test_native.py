"""The C matrix kernel against torch's products: float32 and bfloat16 weights packed in panels, odd
sizes (a partial last panel, k with tails), bias or none, one row to a prefill's many; and its
fixed summation order (a row's result does not depend on its batch or on the thread count)."""

from __future__ import annotations

import pytest
import torch
from threads import torch_threads

from greedyscore.engines import native
from greedyscore.engines.layout import GEMM_ROWS, NativeLinear
from greedyscore.engines.native import pack, unpack


@pytest.fixture(scope="module")
def kernel():
    k = native.kernel()
    assert k is not None, "the kernel must build on this machine (gcc is part of it)"
    return k


@pytest.mark.parametrize("k_in", [1, 15, 16, 33, 576, 1003])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernel_computes_x_times_w_transposed(kernel, k_in, dtype):
    torch.manual_seed(k_in)
    w = torch.randn(37, k_in).to(dtype)  # a full panel of 32 outputs and a partial one
    packed = pack(w)
    assert packed.shape == (2, k_in, 32) and packed.dtype == dtype and torch.equal(unpack(packed, 37), w)
    bias = torch.randn(37)
    for rows in (1, 3, 8, 13, 70):
        x = torch.randn(rows, k_in)
        want = x.double() @ w.double().t()  # float64 reference of the same (rounded) weights
        for b in (None, bias):
            got = kernel.linear(x, packed, b, 37)
            assert got.dtype == torch.float32 and got.shape == (rows, 37)
            ref = want + (0 if b is None else b.double())
            assert torch.allclose(got.double(), ref, atol=1e-4 * max(1, k_in ** 0.5), rtol=1e-5)


@pytest.mark.parametrize("k_in", [7, 576, 1003])  # tails: k not a multiple of 16 or 32
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_row_gets_the_same_bits_alone_in_a_batch_and_with_one_or_two_threads(kernel, k_in, dtype):
    torch.manual_seed(0)
    w = torch.randn(301, k_in).to(dtype)
    bias = torch.randn(301)
    packed = pack(w)
    x = torch.randn(17, k_in)
    batch = kernel.linear(x, packed, bias, 301)
    with torch_threads(1):
        one_thread = kernel.linear(x, packed, bias, 301)
    assert torch.equal(batch, one_thread)
    for rows in (1, 2, 3, 5, 7, 9, 12, 15):  # every tile: 8-, 4-, 2- and 1-row, and their mixes
        for r in range(17 - rows + 1):
            assert torch.equal(kernel.linear(x[r : r + rows].contiguous(), packed, bias, 301), batch[r : r + rows])


def test_the_kernel_refuses_what_it_cannot_read(kernel):
    x = torch.randn(2, 8)
    good = pack(torch.randn(4, 8))
    for w, b in ((pack(torch.randn(4, 8).half()), None), (pack(torch.randn(4, 9)), None),
                 (good.transpose(0, 1), None), (torch.randn(4, 8), None), (pack(torch.randn(40, 8)), None),
                 (good, torch.randn(5))):
        with pytest.raises(ValueError):
            kernel.linear(x, w, b, 4)
    with pytest.raises(ValueError):
        kernel.linear(x.double(), good, None, 4)
    assert kernel.linear(x, good, None, 4).shape == (2, 4)


def test_native_linear_keeps_dtype_and_shape_and_leaves_bfloat16_prefills_to_onednn(kernel, monkeypatch):
    torch.manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        plain = torch.nn.Linear(64, 48, bias=True).to(dtype)
        mine = NativeLinear(plain, kernel)
        assert (mine.plain is not None) == (dtype == torch.bfloat16)  # float32 keeps only the packed weight
        assert torch.equal(mine.weight, plain.weight)
        for shape in ((1, 1, 64), (2, 3, 64), (64,), (1, GEMM_ROWS + 5, 64)):
            x = torch.randn(shape).to(dtype)
            with torch.no_grad():
                y = mine(x)
                assert y.dtype == dtype and y.shape == plain(x).shape
                assert torch.allclose(y.float(), plain(x).float(), atol=0.05 if dtype == torch.bfloat16 else 1e-5)
    calls = []
    monkeypatch.setattr(kernel, "linear", lambda x, packed, b, n: calls.append(n) or torch.zeros(x.shape[0], n))
    with torch.no_grad():
        mine(torch.randn(1, GEMM_ROWS + 1, 64).to(torch.bfloat16))  # a bfloat16 prefill: oneDNN, not the kernel
        assert calls == []
        NativeLinear(torch.nn.Linear(64, 48), kernel)(torch.randn(1, GEMM_ROWS + 1, 64))  # float32: the kernel
    assert len(calls) == 1


def test_the_kernel_can_be_turned_off_and_says_why_when_it_cannot_build(monkeypatch, capsys):
    monkeypatch.setenv("GREEDYSCORE_NATIVE", "0")
    assert native._load() is None
    monkeypatch.setenv("GREEDYSCORE_NATIVE", "1")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert native._load() is None
    assert "could not build the CPU kernel" in capsys.readouterr().err


def test_a_model_with_the_kernel_can_be_copied_and_pickled(engine):
    import copy
    import pickle

    from greedyscore.engines.layout import NativeLinear

    layer = engine.model.model.layers[0].mlp.up_proj
    assert isinstance(layer, NativeLinear)
    x = torch.randn(1, 1, 576)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone.kernel is layer.kernel
        with torch.no_grad():
            assert torch.equal(clone(x), layer(x))
    half = copy.deepcopy(engine.model.model.layers[0]).to(torch.bfloat16)  # what the LMDeploy stand-in does
    assert half.mlp.up_proj.weight.dtype == torch.bfloat16
