"""Many users on one shared engine: batched vs one-at-a-time, side by side in one run.

N users (1, 4, 8, 16) each send R requests back to back through `Service.chat` (what the web
app calls); every reply is exactly T new tokens (stop ids replaced, see common.py). Reports
aggregate generated tokens/s and p50/p95 latency per request.

    python benchmarks/bench_load.py [--users 1,4,8,16] [--requests 2] [--tokens 32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import fixed_length_engine, git_rev, machine, table, write_section  # noqa: E402

PROMPTS = ["Tell me about rivers.", "你好，请介绍一下你自己", "Write a short poem about bread.",
           "Explain greedy decoding.", "List some colours.", "What is a prime number?",
           "Describe a cat.", "How do bridges stand?"]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def load(service, users: int, requests: int, tokens: int) -> dict[str, float]:
    from greedyscore.types import Message, Settings

    settings = Settings(max_new_tokens=tokens, top_k=5)

    def user(u: int) -> list[tuple[float, int]]:
        out = []
        for r in range(requests):
            t0 = time.perf_counter()
            reply = service.chat([Message("user", PROMPTS[(u + r) % len(PROMPTS)])], settings)
            out.append((time.perf_counter() - t0, len(reply.tokens)))
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(users) as pool:
        results = [x for xs in pool.map(user, range(users)) for x in xs]
    wall = time.perf_counter() - t0
    lat = [r[0] for r in results]
    return {"tps": sum(r[1] for r in results) / wall, "p50": statistics.median(lat), "p95": percentile(lat, 0.95)}


def bare_batch(engine, n: int, tokens: int) -> float:
    """tokens/s of one plain transformers `generate` over n prompts (no scoring, no service)."""
    import torch
    from transformers import GenerationConfig

    from greedyscore.types import Message

    prompts = [engine.tokenizer.prompt_ids([Message("user", PROMPTS[i % len(PROMPTS)])]) for i in range(n)]
    width = max(map(len, prompts))
    ids = torch.tensor([[engine.pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    config = GenerationConfig(do_sample=False, max_new_tokens=tokens, eos_token_id=sorted(engine.info.stop_ids),
                              pad_token_id=engine.pad_id)
    with torch.inference_mode():
        t0 = time.perf_counter()
        engine.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return n * tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", default="1,4,8,16")
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    from greedyscore.service import Service

    engine = fixed_length_engine()
    batched = Service(engine, max_batch=16)
    serial = Service(engine, max_batch=1)  # same worker, one request per generate
    load(batched, 1, 1, 8)  # warm-up
    rows: list[list[str]] = []
    base: dict[str, float] = {}
    bare1 = 1.0
    for n in [int(x) for x in args.users.split(",")]:
        s = load(serial, n, args.requests, args.tokens)
        b = load(batched, n, args.requests, args.tokens)
        bare = bare_batch(engine, n, args.tokens)
        if n == 1:
            base, bare1 = b, bare
        rows.append([
            str(n), f"{s['tps']:.1f}", f"{b['tps']:.1f}", f"{b['tps'] / base['tps']:.2f}x",
            f"{bare:.1f} ({bare / bare1:.2f}x)",
            f"{s['p50']:.2f} / {s['p95']:.2f}", f"{b['p50']:.2f} / {b['p95']:.2f}",
            f"{b['p95'] / base['p95']:.2f}x",
        ])
        print(" | ".join(rows[-1]), flush=True)
    header = ["users", "one-at-a-time tok/s", "batched tok/s", "batched vs 1 user",
              "bare HF batch tok/s (vs batch of 1)", "one-at-a-time p50/p95 s",
              "batched p50/p95 s", "batched p95 vs 1 user"]
    body = (f"Machine: {machine()}. Commit {git_rev()}. Each user sends {args.requests} requests back to back, "
            f"{args.tokens} new tokens each, through Service.chat (single-pass scoring included).\n"
            f"Batch sizes seen: max {max(batched.runner.batch_sizes)}. The bare column is one plain transformers "
            f"`generate` over n prompts without scoring or service: the ceiling batching can reach.\n\n"
            + table(header, rows))
    print(body)
    write_section("Shared engine under load (bench_load.py)", body)


if __name__ == "__main__":
    main()
