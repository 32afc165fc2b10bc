"""The engine's CPU weight layouts compute the model as loaded: the C kernel's (where its gate
chooses it; the suite runs it wherever it builds) and the fallback's (every Linear transposed,
in column blocks)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from greedyscore.engines import layout
from greedyscore.engines.layout import NativeLinear, SplitLinear, split_linears
from greedyscore.types import Message


def _prefill_and_step(model, ids):
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        prefill = model(input_ids=ids, cache=cache, use_cache=True).logits[0]
        step = model(input_ids=torch.tensor([[42]]), cache=cache, use_cache=True).logits[0, -1]
    return prefill, step


def _as_loaded(engine):
    return AutoModelForCausalLM.from_pretrained(engine.info.source, dtype=torch.float32).eval()


def test_the_engine_decodes_through_the_kernel_and_gives_the_logits_of_the_model_as_loaded(engine):
    assert engine.info.layout == "native"
    assert not any(type(m) is torch.nn.Linear for m in engine.model.modules())
    assert any(isinstance(m, NativeLinear) for m in engine.model.modules())
    plain = _as_loaded(engine)
    ids = torch.tensor([engine.tokenizer.prompt_ids([Message("user", "你好, what is 2+2?")])])
    for mine, theirs in zip(_prefill_and_step(engine.model, ids), _prefill_and_step(plain, ids), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-3, rtol=0)
        assert torch.equal(mine.argmax(-1), theirs.argmax(-1))
    # the tied output layer's packed weight holds the embedding's numbers (the embedding keeps its tensor)
    assert torch.equal(engine.model.lm_head.weight, engine.model.model.embed_tokens.weight)


def test_without_the_kernel_the_split_layout_gives_the_logits_of_the_model_as_loaded(engine, monkeypatch):
    from greedyscore.engines import native

    monkeypatch.setattr(native, "accelerator", lambda precision: None)
    split = _as_loaded(engine)
    assert layout.cpu_layout(split, "float32") == "split"
    assert any(isinstance(m, SplitLinear) and m.parts > 1 for m in split.modules())
    plain = _as_loaded(engine)
    ids = torch.tensor([engine.tokenizer.prompt_ids([Message("user", "Name three rivers.")])])
    for mine, theirs in zip(_prefill_and_step(split, ids), _prefill_and_step(plain, ids), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-3, rtol=0)
        assert torch.equal(mine.argmax(-1), theirs.argmax(-1))
    head = split.lm_head
    weight_t = head.weight_blocks.permute(1, 0, 2).reshape(head.in_features, head.out_features)
    assert torch.equal(weight_t, plain.get_output_embeddings().weight.t())
    assert split_linears(split) == 0  # nothing left to replace


def test_a_split_linear_computes_its_linear_for_one_row_a_batch_and_odd_widths():
    torch.manual_seed(0)
    for out, parts in ((192, 2), (192, 3), (7, 2)):  # 7 columns do not split in 2: one block
        plain = torch.nn.Linear(64, out, bias=True)
        split = SplitLinear(plain, parts)
        assert split.parts == (1 if out % parts else parts)
        for shape in ((1, 1, 64), (3, 5, 64), (64,), (2, 40, 64)):  # the last: more rows than one bmm takes
            x = torch.randn(shape)
            with torch.no_grad():
                assert torch.allclose(split(x), plain(x), atol=1e-5, rtol=0)


def test_the_laid_out_model_lets_go_of_the_loaded_file():
    """The loaded model's tensors are views of the mmapped safetensors file; packing reads every
    weight, so while one view lives the whole file stays resident (~0.5 GB here). After the layout
    no tensor of the model may point into the file: it is unmapped (a fresh process: other tests
    map the same file)."""
    code = ("from greedyscore.engines.transformers import TransformersEngine\n"
            "e = TransformersEngine.load(None, device='cpu')\n"
            "from pathlib import Path\n"
            "maps = Path('/proc/self/maps').read_text()\n"
            "print(e.info.layout, any(line.endswith('.safetensors') for line in maps.splitlines()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["native", "False"]


# --- where the model work runs: one OpenMP pool, the decoding thread's --------------------------

POOL_PROBE = """
import os, sys, threading, time
import torch
torch.set_num_threads(2)
from greedyscore.cpu import in_a_thread_of_its_own

def tasks():
    return len(os.listdir('/proc/self/task'))

def parallel_work():
    return float(torch.ones(1 << 22).sum())  # a reduction torch splits over its OpenMP threads

def settled(want, limit_s=5.0):
    end = time.monotonic() + limit_s
    while tasks() != want and time.monotonic() < end:
        time.sleep(0.01)
    return tasks()

base = tasks()
assert in_a_thread_of_its_own(parallel_work)() == 1 << 22
after_own_thread = settled(base)
parallel_work()
after_main = settled(base + 1)
print(base, after_own_thread, after_main)
"""


def test_parallel_work_in_a_thread_of_its_own_leaves_no_openmp_pool_behind():
    """What the load's thread of its own is for: libgomp keeps a pool of workers for each thread that
    ran a parallel region, for that thread's life; one in the main thread stays (and would throttle
    the decoding thread's pool: greedyscore/cpu.py), one in a thread that ends goes with it."""
    if not Path("/proc/self/task").is_dir() or "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("counts OpenMP's threads in /proc: Linux, torch on OpenMP")
    out = subprocess.run([sys.executable, "-c", POOL_PROBE], capture_output=True, text=True, timeout=120, check=True)
    base, after_own_thread, after_main = map(int, out.stdout.split())
    assert after_own_thread == base  # the thread's pool (one worker for 2 threads) went with it
    assert after_main == base + 1  # the main thread's stays: the state a load in the main thread left


def test_the_engine_loads_and_lays_out_in_a_thread_that_ends_and_raises_its_errors_in_the_caller(monkeypatch):
    from greedyscore.engines import transformers as hf
    from greedyscore.errors import BadInput

    seen: list[threading.Thread] = []
    real = hf.cpu_layout
    monkeypatch.setattr(hf, "cpu_layout", lambda model, precision: seen.append(threading.current_thread())
                        or real(model, precision))
    engine = hf.TransformersEngine.load(None, device="cpu")
    assert engine.info.layout in ("native", "split") and len(seen) == 1
    assert seen[0] is not threading.current_thread() and not seen[0].is_alive()
    with pytest.raises(BadInput, match="unknown precision"):
        hf.TransformersEngine.load(None, device="cpu", precision="float16")
