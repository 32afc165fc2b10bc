"""The C matrix kernel against torch's products, on every variant that builds here (this CPU's
and the AVX2 build): float32 and bfloat16 weights packed in panels, odd sizes (a partial last
panel, k with tails), bias or none, one row to a prefill's many; and its fixed summation order (a
row's result does not depend on its batch or on the thread count).

Then the gate that decides whether the engine uses it (engines/native/gate.py), on a scripted
clock: it picks the faster path either way, keeps its decision beside the build and rereads it,
measures again for another source or target, falls back to torch with one message where nothing
builds, and gives way to GREEDYSCORE_NATIVE=0|1."""

from __future__ import annotations

import ctypes
import shutil
import threading

import pytest
import torch
from kernel_variants import MARCHES, built
from threads import torch_threads
from transformers import LlamaConfig, LlamaForCausalLM

from greedyscore.engines import native
from greedyscore.engines.layout import GEMM_ROWS, NativeLinear, cpu_layout
from greedyscore.engines.native import build, gate, pack, unpack


@pytest.fixture(scope="module", params=MARCHES)
def kernel(request):
    return built(request.param)


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


# --- the gate ------------------------------------------------------------------------------------

REAL_BUILD = build._build
TINY = {"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "vocab_size": 97}  # the gate's test model here (its steps still run)


def _tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def script(kernel_s: float, torch_s: float, seen: list | None = None, threads: list | None = None):
    """A gate clock that runs the work and says it took kernel_s or torch_s seconds (the paths it
    timed put in `seen`, the threads it timed them in in `threads`)."""
    def timer(path, work):
        work()
        if seen is not None:
            seen.append(path)
        if threads is not None:
            threads.append(threading.current_thread())
        return {"kernel": kernel_s, "torch": torch_s}[path]
    return timer


def _new_process(monkeypatch) -> None:
    """Forget what this process built and chose (the files stay)."""
    monkeypatch.setattr(native, "_chosen", {})
    monkeypatch.setattr(build, "_built", {})


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache, no override, a gate of TINY weights, and builds that copy this CPU's
    library instead of compiling; -> the targets "built"."""
    library = built("native").path
    made = []

    def copy(cc, target, out):
        made.append(target)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(library, out)

    for name in ("GREEDYSCORE_NATIVE", "GREEDYSCORE_CPU_MARCH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GREEDYSCORE_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "_build", copy)
    monkeypatch.setattr(gate, "MODEL", TINY)
    monkeypatch.setattr(gate, "REPS", 3)
    _new_process(monkeypatch)
    return made


def test_the_gate_uses_the_kernel_only_where_it_measures_faster(fresh, tmp_path, capsys, monkeypatch):
    for precision in ("float32", "bfloat16"):
        for kernel_s, torch_s in ((0.001, 0.003), (0.003, 0.001)):
            library = tmp_path / f"{precision}-{kernel_s}.so"  # a new file: a loaded one must not change
            shutil.copy(built("native").path, library)
            k = native.Kernel(ctypes.CDLL(str(library)), library)
            seen, threads = [], []
            monkeypatch.setattr(gate, "clock", script(kernel_s, torch_s, seen, threads))
            d = gate.choose(k, "", precision, "native")
            assert seen == ["kernel", "torch", "torch", "kernel", "kernel", "torch"]  # interleaved, each first in turn
            assert set(threads) == {threading.current_thread()}  # timed where the engine loads: no other pool
            assert d.used == (kernel_s < torch_s) and d.reason == gate.MEASURED and not d.cached
            assert (d.kernel_ms, d.torch_ms) == (pytest.approx(kernel_s * 1e3), pytest.approx(torch_s * 1e3))
            said = capsys.readouterr().err
            assert said == d.log_line() + "\n"  # one line, with the times
            assert f"{d.kernel_ms:.1f} vs torch {d.torch_ms:.1f} ms per test step ({precision}, " in said
            assert ("not used" in said) == (kernel_s > torch_s)


def test_the_engine_lays_the_model_out_as_the_gate_decides(fresh, monkeypatch):
    monkeypatch.setattr(gate, "clock", script(0.003, 0.001))  # torch faster
    assert native.accelerator("float32") is None and cpu_layout(_tiny(), "float32") == "split"
    assert not native.decision("float32").used
    monkeypatch.setattr(gate, "clock", script(0.001, 0.003))
    assert native.accelerator("bfloat16") is not None  # a decision per precision
    assert cpu_layout(_tiny().to(torch.bfloat16), "bfloat16") == "native"
    assert "float32: not used" in native.help_text() and "bfloat16: used" in native.help_text()


def test_the_decision_is_kept_with_the_build_and_measured_again_for_another_source_or_target(fresh, monkeypatch,
                                                                                             tmp_path, capsys):
    seen = []
    monkeypatch.setattr(gate, "clock", script(0.001, 0.002, seen))
    assert "not measured yet" in native.help_text()
    first = native.decision("float32")
    library = native.accelerator("float32").path
    assert first.used and not first.cached and seen and fresh == ["native"]
    assert library.parent == tmp_path / "kernels" and library.name.startswith("native-")
    assert library.with_suffix(".json").exists() and "float32: used (" in native.help_text()
    _new_process(monkeypatch)  # the next load: the file answers, nothing is timed or built
    seen.clear()
    again = native.decision("float32")
    assert again.cached and seen == [] and fresh == ["native"]
    assert (again.used, again.kernel_ms, again.torch_ms) == (first.used, first.kernel_ms, first.torch_ms)
    assert "measured at its first load" in capsys.readouterr().err.splitlines()[-1]
    monkeypatch.setenv("GREEDYSCORE_CPU_MARCH", "x86-64-v3")  # another target: its own build, measured anew
    other = native.decision("float32")
    assert not other.cached and seen and other.march == "x86-64-v3" and fresh == ["native", "x86-64-v3"]
    assert native.accelerator("float32").path.name.startswith("x86-64-v3-")
    monkeypatch.delenv("GREEDYSCORE_CPU_MARCH")
    sources = tmp_path / "sources"  # another source: likewise
    shutil.copytree(build.KERNELS, sources)
    (sources / "linear.h").write_text((sources / "linear.h").read_text() + "\n/* changed */\n")
    monkeypatch.setattr(build, "KERNELS", sources)
    _new_process(monkeypatch)
    seen.clear()
    assert not native.decision("float32").cached and seen and fresh == ["native", "x86-64-v3", "native"]


def test_GREEDYSCORE_NATIVE_overrides_the_gate(fresh, monkeypatch):
    monkeypatch.setattr(gate, "clock", script(0.003, 0.001))  # torch faster: the gate refuses
    refused = native.decision("float32")
    assert not refused.used and native.accelerator("float32") is None
    monkeypatch.setenv("GREEDYSCORE_NATIVE", "1")
    forced = native.decision("float32")
    assert native.accelerator("float32") is not None and cpu_layout(_tiny(), "float32") == "native"
    assert forced.used and forced.reason == "GREEDYSCORE_NATIVE=1" and forced.kernel_ms == refused.kernel_ms
    assert "used: GREEDYSCORE_NATIVE=1 (measured " in forced.note()
    monkeypatch.setenv("GREEDYSCORE_NATIVE", "0")
    monkeypatch.setattr(native, "built", lambda target: pytest.fail("=0 builds nothing"))
    assert native.accelerator("float32") is None and cpu_layout(_tiny(), "float32") == "split"
    assert native.decision("float32").note() == "CPU kernel not used: GREEDYSCORE_NATIVE=0"


def test_GREEDYSCORE_CPU_MARCH_names_the_target_the_kernel_is_built_for(monkeypatch):
    monkeypatch.setenv("GREEDYSCORE_CPU_MARCH", "x86-64-v3")
    k = native.kernel()
    if k is None:
        pytest.skip("no x86-64-v3 build here")
    assert k is built("x86-64-v3") and k.march == "x86-64-v3" and k.path.name.startswith("x86-64-v3-")


@pytest.mark.parametrize("where", ["no compiler", "a compiler that is not there", "a target gcc refuses"])
def test_without_a_compiler_or_with_a_failing_build_torch_runs_and_one_line_says_why(fresh, monkeypatch, capsys,
                                                                                        where):
    monkeypatch.setattr(build, "_build", REAL_BUILD)
    if where == "no compiler":
        monkeypatch.delenv("CC", raising=False)
        monkeypatch.setenv("PATH", "")
    elif where == "a compiler that is not there":
        monkeypatch.setenv("CC", "/nonexistent/cc")
    else:
        monkeypatch.setenv("GREEDYSCORE_CPU_MARCH", "no-such-cpu")
    assert native.accelerator("float32") is None and cpu_layout(_tiny(), "float32") == "split"
    d = native.decision("float32")
    assert not d.used and d.kernel_ms is None
    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1, said
    if where == "no compiler":
        assert d.reason == "no C compiler" and "no C compiler found" in said[0]
    else:
        assert d.reason.startswith("could not build") and "could not build the CPU kernel" in said[0]
        assert where != "a target gcc refuses" or "no-such-cpu" in said[0]
