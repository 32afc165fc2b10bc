"""The CPU kernel's gate (engines/native/gate.py) against what it decides about: decode ms/token
of the embedded model with each build of the kernel, without it, and without any layout.

Configurations, each in a fresh subprocess with its environment, interleaved over rounds (each
round in another order), one 128-token reply from a 40-token prompt per repeat (decode steps
only, as llama-bench's tg counts), decoded as the app decodes: TransformersEngine.load, then
Service's scheduler thread:

- default: nothing set; the gate decides for this machine's own build (-march=native)
- native forced: GREEDYSCORE_NATIVE=1 (the kernel whatever the gate says)
- x86-64-v3 gated: GREEDYSCORE_CPU_MARCH=x86-64-v3 (the AVX2 build; the gate decides)
- x86-64-v3 forced: the AVX2 build with GREEDYSCORE_NATIVE=1
- torch: GREEDYSCORE_NATIVE=0 (SplitLinear's column-block bmm, LlamaStep's torch operations)
- before: x86-64-v3 gated and torch again, the load run in the main thread as before the load got
  a thread of its own (cpu.in_a_thread_of_its_own): libgomp then throttles the decoding thread's pool
- stock transformers: the model as from_pretrained loads it, transformers' forward every step, load
  and decode in the main thread (a script's way, and stock's best: one OpenMP pool)
- bfloat16 (`--dtype bfloat16`, where the CPU has bf16 instructions): gated, and GREEDYSCORE_NATIVE=0

Then the gate itself, fresh (the cached decision not read): `gate.measure` for each build and
precision, --gate-runs times, in a subprocess each, with what it would decide.

    python benchmarks/bench_native.py [--rounds 3] [--repeats 3] [--gate-runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

STOCK = "stock transformers"
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from benchmarks.common import git_rev, machine, median, table, write_section  # noqa: E402

CONFIGS = {
    "default (native build, gated)": {},
    "native build, forced (GREEDYSCORE_NATIVE=1)": {"GREEDYSCORE_NATIVE": "1"},
    "x86-64-v3 build, gated": {"GREEDYSCORE_CPU_MARCH": "x86-64-v3"},
    "x86-64-v3 build, forced": {"GREEDYSCORE_CPU_MARCH": "x86-64-v3", "GREEDYSCORE_NATIVE": "1"},
    "torch (GREEDYSCORE_NATIVE=0)": {"GREEDYSCORE_NATIVE": "0"},
    "before: x86-64-v3 build, gated, loaded in the main thread": {"GREEDYSCORE_CPU_MARCH": "x86-64-v3",
                                                                  "BENCH_LOAD_IN_MAIN": "1"},
    "before: torch (GREEDYSCORE_NATIVE=0), loaded in the main thread": {"GREEDYSCORE_NATIVE": "0",
                                                                        "BENCH_LOAD_IN_MAIN": "1"},
    STOCK: {"GREEDYSCORE_NATIVE": "0", "BENCH_STOCK": "1"},
    "bfloat16: default (gated)": {"BENCH_PRECISION": "bfloat16"},
    "bfloat16: torch (GREEDYSCORE_NATIVE=0)": {"BENCH_PRECISION": "bfloat16", "GREEDYSCORE_NATIVE": "0"},
}
MARCHES = ("native", "x86-64-v3")
TOKENS, CONTEXT = 128, 40


def child(env: dict[str, str], *args: str) -> dict:
    full = {k: v for k, v in os.environ.items() if k not in ("GREEDYSCORE_NATIVE", "GREEDYSCORE_CPU_MARCH")}
    out = subprocess.run([sys.executable, __file__, *args], env={**full, **env}, capture_output=True, text=True,
                         timeout=1800)
    if out.returncode:
        raise RuntimeError(f"{args} {env} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def decode_child(repeats: int) -> None:
    """Print {"ms": median ms per decode step, "layout", "decision"} for this process's environment:
    greedyscore as the app runs it (TransformersEngine.load, then Service's scheduler thread decodes;
    BENCH_LOAD_IN_MAIN: the load in the main thread, as before cpu.in_a_thread_of_its_own), or stock
    transformers as a script runs it (from_pretrained, then transformers' forward every step, all in
    the main thread: its best case, one OpenMP pool)."""
    from benchmarks.common import filler_prompt, fixed_length_engine
    from greedyscore.engines import native
    from greedyscore.engines.transformers import TransformersEngine

    if os.environ.get("BENCH_STOCK"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from greedyscore.models import resolve_model

        name, source = resolve_model(None)
        lm = AutoModelForCausalLM.from_pretrained(source, dtype="float32").eval()
        engine = TransformersEngine(lm, AutoTokenizer.from_pretrained(source), name, layout="as loaded")
        prompt = tuple(filler_prompt(engine.tokenizer, CONTEXT))
        ms = [stock_decode(engine, prompt) for _ in range(repeats + 1)][1:]  # the first: a warm-up
        decision = None
    else:
        precision = os.environ.get("BENCH_PRECISION", "float32")
        if os.environ.get("BENCH_LOAD_IN_MAIN"):
            from unittest import mock

            loads = TransformersEngine.load.__wrapped__  # the load itself, in this (the main) thread
            with mock.patch.object(TransformersEngine, "load", classmethod(loads)):
                engine = fixed_length_engine(precision)
        else:
            engine = fixed_length_engine(precision)
        decision = native.decision(precision)
        ms = service_decode(engine, tuple(filler_prompt(engine.tokenizer, CONTEXT)), repeats)
    print(json.dumps({"ms": statistics.median(ms), "layout": engine.info.layout,
                      "decision": decision and decision.note()}))


def service_decode(engine, prompt: tuple[int, ...], repeats: int) -> list[float]:
    """ms per decode step of TOKENS-token replies through Service's scheduler thread (as the app
    decodes), from the first new token to the last (the prefill left out, as llama-bench's tg)."""
    import time

    from greedyscore.engines.base import GenerateRequest
    from greedyscore.service import Service

    def reply(n: int) -> float:
        seen: list[float] = []
        request = GenerateRequest(prompt, n, 5, on_ids=lambda ids: seen.append(time.perf_counter()))
        service.runner.submit(request).result()
        assert len(seen) == n
        return (seen[-1] - seen[0]) * 1000 / (n - 1)

    with Service(engine) as service:
        reply(8)  # warm-up
        return [reply(TOKENS) for _ in range(repeats)]


def stock_decode(engine, prompt: tuple[int, ...]) -> float:
    """ms per decode step of a TOKENS-token reply through our loop over transformers' forward
    (`DecodeBatch(fast=False)`: the same argmax and scores per step), in this thread."""
    import time

    from greedyscore.engines.base import GenerateRequest
    from greedyscore.engines.decode import DecodeBatch

    batch = DecodeBatch(engine.model, frozenset({engine.model.config.vocab_size - 1}), fast=False)
    batch.join(GenerateRequest(prompt, TOKENS, 5))
    batch.step()  # the first new token: the prefill's
    t0 = time.perf_counter()
    while len(batch):
        batch.step()
    return (time.perf_counter() - t0) * 1000 / (TOKENS - 1)


def gate_child() -> None:
    """Print {precision: [kernel_ms, torch_ms] per test step, "products": {precision: [kernel_ms,
    torch_ms] per product}} measured afresh for this process's build, in a thread of its own as the
    engine's load gates (cpu.in_a_thread_of_its_own)."""
    import torch

    from greedyscore.cpu import bf16_instructions, in_a_thread_of_its_own
    from greedyscore.engines.native import gate, kernel

    k = kernel()
    if k is None:
        print(json.dumps({}))
        return

    @in_a_thread_of_its_own
    def measured() -> dict:
        precisions = ["float32"] + (["bfloat16"] if bf16_instructions() else [])
        got: dict = {p: gate.measure(k, p) for p in precisions}
        got["products"] = {p: products(k, gate.DTYPES[p]) for p in precisions}
        return got

    print(json.dumps({**measured(), "threads": torch.get_num_threads()}))


def products(kernel, dtype) -> tuple[float, float]:
    """What the gate does not time: single products, the kernel's `linear` on packed weights
    against the layout's torch module, for the embedded model's output layer (49152 x 576) and
    16 of its 1536 x 576 matrices, 1 and 8 rows: (kernel, torch) ms per product, best of 5."""
    import time

    import torch
    from torch import nn

    from greedyscore.engines.layout import torch_layout
    from greedyscore.engines.native import packed_shape

    shapes, rows = ((49152, 576, 1), (1536, 576, 16)), (1, 8)
    packed = [[torch.full(packed_shape(n, k), 1 / 64, dtype=dtype) for _ in range(c)] for n, k, c in shapes]
    layers = [nn.ModuleList(nn.Linear(k, n, bias=False, dtype=dtype) for _ in range(c)) for n, k, c in shapes]
    for m in layers:
        torch_layout(m, "float32" if dtype == torch.float32 else "bfloat16")
    xs = {r: torch.randn(r, 576) for r in rows}

    def mine() -> None:
        for (n, _, _), ws in zip(shapes, packed):
            for r in rows:
                for w in ws:
                    kernel.linear(xs[r], w, None, n)

    def theirs() -> None:
        with torch.inference_mode():
            for ms in layers:
                for r in rows:
                    for m in ms:
                        m(xs[r].to(dtype))

    best = [float("inf"), float("inf")]
    for i in range(6):
        for j, f in enumerate((mine, theirs)):
            t0 = time.perf_counter()
            f()
            if i:  # the first: a warm-up
                best[j] = min(best[j], time.perf_counter() - t0)
    count = len(rows) * sum(c for _, _, c in shapes)
    return best[0] * 1000 / count, best[1] * 1000 / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="replies per subprocess (their median)")
    ap.add_argument("--gate-runs", type=int, default=3)
    ap.add_argument("--decode-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--gate-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.decode_child:
        return decode_child(args.repeats)
    if args.gate_child:
        return gate_child()

    from greedyscore.cpu import bf16_instructions

    load_before = os.getloadavg()[0]  # another job on the machine slows every row: said with the results
    names = [n for n in CONFIGS if bf16_instructions() or not n.startswith("bfloat16")]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]  # each configuration first in turn
        for n in order:
            runs[n].append(child(CONFIGS[n], "--decode-child", "--repeats", str(args.repeats)))
            print(f"round {r + 1} {n}: {runs[n][-1]}", flush=True)
    gates: dict[str, list[dict]] = {m: [] for m in MARCHES}
    for _ in range(args.gate_runs):
        for m in MARCHES:
            gates[m].append(child({"GREEDYSCORE_CPU_MARCH": m}, "--gate-child"))
            print(f"gate {m}: {gates[m][-1]}", flush=True)

    decode_rows = []
    for n in names:
        ms = [x["ms"] for x in runs[n]]
        med = median(ms)
        base = "bfloat16: torch (GREEDYSCORE_NATIVE=0)" if n.startswith("bfloat16") else "torch (GREEDYSCORE_NATIVE=0)"
        torch_ms = median([x["ms"] for x in runs[base]])
        stock_ms = median([x["ms"] for x in runs[STOCK]])
        decided = runs[n][-1]["decision"] or "no layout: transformers' forward every step"
        decode_rows.append([n, f"{med:.1f}", f"{min(ms):.1f}-{max(ms):.1f}", f"{torch_ms / med:.2f}x",
                            f"{stock_ms / med:.2f}x", runs[n][-1]["layout"], decided])
    gate_rows, product_rows = [], []
    for m in MARCHES:
        for p in gates[m][0].get("products", {}):
            pairs = [g[p] for g in gates[m]]
            wins = sum(k < t for k, t in pairs)
            gate_rows.append([m, p, ", ".join(f"{k:.1f} / {t:.1f}" for k, t in pairs),
                              f"{wins} of {len(pairs)}: " + ("used" if wins * 2 > len(pairs) else "not used")])
            singles = [g["products"][p] for g in gates[m]]
            product_rows.append([m, p, ", ".join(f"{k:.2f} / {t:.2f}" for k, t in singles),
                                 f"{sum(k < t for k, t in singles)} of {len(singles)}"])
    load = f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    body = (f"Machine: {machine()}. Commit {git_rev()}; {load}.\n\n"
            f"Decode of the embedded model (float32 unless said), ms per token (one 128-token reply from a "
            f"40-token prompt, the median of {args.repeats} per subprocess; median and range over {args.rounds} "
            "interleaved rounds, each configuration in a fresh process with its environment; \"vs torch\": the "
            "torch fallback's ms at the same precision over this row's; \"vs stock\": stock transformers' float32 "
            "ms over this row's, above 1 faster). The last column is what the engine said about the kernel (the end "
            "of its score source):\n\n"
            + table(["configuration", "ms/token", "range", "vs torch", "vs stock", "layout", "the gate's decision"],
                    decode_rows)
            + f"\n\nThe gate measured afresh ({args.gate_runs} processes per build, the cache not read): kernel / "
            "torch ms per decode step of its test model (8 layers of the embedded model's shapes, a 24,576-token "
            "vocabulary; a 1-row and an 8-row step; the best of 5, interleaved, in a thread of its own):\n\n"
            + table(["build (-march)", "precision", "kernel / torch ms per test step", "kernel faster in"], gate_rows)
            + "\n\nWhat the gate does not time, for comparison: single products (the kernel's `linear` against the "
            "torch layout's module; the embedded model's 49152 x 576 output layer and 16 of its 1536 x 576 "
            "matrices, 1 and 8 rows, best of 5, in the same thread), ms per product:\n\n"
            + table(["build (-march)", "precision", "kernel / torch ms per product", "kernel faster in"], product_rows))
    print(body)
    write_section("The CPU kernel's gate (bench_native.py)", body)


if __name__ == "__main__":
    main()
