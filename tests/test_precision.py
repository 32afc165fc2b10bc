"""--dtype bfloat16: allowed only where the CPU has bf16 instructions, its drift from float32
measured at load and shown with every score."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import cli

from greedyscore import cpu
from greedyscore.errors import EngineUnavailable
from greedyscore.precision import load_lower_precision
from greedyscore.types import Message, Settings

XEON = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
EPYC_ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_bf16_instructions_are_read_from_cpuinfo():
    assert cpu.bf16_instructions(XEON) == ["amx_bf16", "avx512_bf16"]
    assert cpu.bf16_instructions(EPYC_ZEN3) == []
    assert cpu.bf16_instructions(GRAVITON) == ["bf16"]
    assert cpu.bf16_instructions("") == []


def test_bfloat16_is_refused_with_what_to_do_on_a_cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(cpu, "bf16_instructions", lambda cpuinfo=None: [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EngineUnavailable, match="bfloat16 instructions.*leave --dtype at float32"):
        load_lower_precision(None, "bfloat16")


def test_dtype_is_for_the_transformers_engine_only():
    proc = cli("chat", "--dtype", "bfloat16", "--backend", "openai", "--base-url", "http://127.0.0.1:9", "Hi")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "--dtype bfloat16 is for the transformers engine" in proc.stderr


def test_bfloat16_on_this_cpu_is_measured_against_float32_or_refused(engine):
    """Either branch is a real check: where the CPU has bf16 the engine loads, its weights go
    through oneDNN's packed kernels, and the drift is the |Δp| of its chosen tokens against the
    float32 engine's teacher-forced scores; where it has none, the CLI refuses in one line."""
    proc = cli("chat", "--dtype", "bfloat16", "--json", "--max-new-tokens", "12", "What is 17 times 23?")
    if not cpu.bf16_instructions():
        assert proc.returncode == 1 and "needs a CPU with bfloat16 instructions" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["score_source"].startswith("bfloat16 weights (cpu): prompts in bfloat16, each new token's step "
                                            "in float32 arithmetic")
    assert "approximate: |Δp| vs float32 max" in reply["score_source"]
    # the reply's own scores vs the float32 engine's teacher-forced ones: bfloat16 differs, a little
    ids = [t["id"] for t in reply["tokens"]]
    ref = engine.score_ids(reply["prompt_token_ids"], ids, 1).logprob.exp()
    mine = torch.tensor([t["prob"] for t in reply["tokens"]])
    delta = (mine - ref).abs()
    assert 0 < float(delta.max()) < 0.2
    shown_max = float(reply["score_source"].split("vs float32 max ")[1].split(",")[0])
    assert 0 < shown_max < 0.2


def test_bfloat16_engine_decodes_through_the_kernel_and_measures_its_drift():
    from greedyscore.engines.layout import NativeLinear
    from greedyscore.service import Service

    if not cpu.bf16_instructions():
        with pytest.raises(EngineUnavailable):
            load_lower_precision(None, "bfloat16")
        return
    bf16 = load_lower_precision(None, "bfloat16")
    assert bf16.info.layout == "native" and any(isinstance(m, NativeLinear) for m in bf16.model.modules())
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    service = Service(bf16)
    drift = service.info.drift
    assert drift.tokens > 0 and 0 < drift.max_dp < 0.2 and 0 < drift.mean_dp <= drift.max_dp
    assert drift.note() not in bf16.info.score_source  # what the engine computes from, the drift apart
    reply = service.chat([Message("user", "Hi")], Settings(max_new_tokens=4))
    assert reply.score_source == f"{bf16.info.score_source}; {drift.note()}"  # every reply says both
    assert service.identity.score_source == reply.score_source
    from greedyscore.ui import build_demo

    page = json.dumps(build_demo(service).config, ensure_ascii=False, default=str)  # the header's model line
    assert "**model probability** (bfloat16 weights (cpu): prompts in bfloat16" in page
    assert f"**{drift.note()}**" in page and "true model probability" not in page
    assert page.count(drift.note()) == 1  # said once, beside the model line


def test_a_packed_linear_computes_its_bfloat16_linear():
    """The bfloat16 layout where the C kernel cannot be built."""
    from greedyscore.engines.layout import PackedLinear

    if not cpu.bf16_instructions():
        pytest.skip("no bf16 instructions: oneDNN's bf16 kernels may be absent and the engine never packs here")
    torch.manual_seed(0)
    plain = torch.nn.Linear(64, 96, bias=True, dtype=torch.bfloat16)
    packed = PackedLinear(plain)
    for shape in ((1, 1, 64), (2, 5, 64)):
        x = torch.randn(shape, dtype=torch.bfloat16)
        with torch.no_grad():
            want = (x.float() @ plain.weight.float().t() + plain.bias.float())
            assert torch.allclose(packed(x).float(), want, atol=0.05, rtol=0.02)


def test_a_bad_dtype_from_the_environment_is_refused_in_one_line():
    proc = cli("chat", "Hi", env={"GREEDYSCORE_DTYPE": "bf16"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # the CLI's exit code for bad input
    assert "unknown dtype 'bf16'" in proc.stderr and "float32, bfloat16" in proc.stderr
