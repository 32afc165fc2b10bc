"""Continuous vs fixed batches, side by side in one run, on the same decode loop.

1. Requests arriving at random (Poisson) times: each request's latency per generated token,
   p50 and p95, against the same request run alone (the solo latency per token); the goal of
   issue 12 is p95 <= 1.5x solo.
2. 8 users at once, 64 new tokens each: aggregate tokens/s.
3. Single stream, 128 new tokens: the decode loop alone vs HF `generate` (the old path) vs the
   bare forward, with the engine's CPU layout (the C kernel) and the model as loaded.

"Fixed" is the old policy, modelled on the same scheduler: requests that arrive together form one
batch, and a request arriving meanwhile waits for the whole batch to end. "Continuous" joins it at
the next step. Every reply is exactly T new tokens (stop ids replaced, see common.py).

    python benchmarks/bench_continuous.py [--requests 16] [--gap 0.8] [--tokens 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_load import PROMPTS, percentile  # noqa: E402
from benchmarks.common import fixed_length_engine, git_rev, machine, table, write_section  # noqa: E402


class FixedBatches:
    """The engine, its decoder closed to newcomers once a batch has taken a step: requests that arrive
    together form one batch and a later one waits for the whole batch to end (the old policy), on
    the same scheduler."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def decoder(self, max_rows: int = 16):
        return _Closed(self.engine.decoder(max_rows), max_rows)


class _Closed:
    def __init__(self, batch, max_rows: int) -> None:
        self.batch, self.max_rows, self.stepped = batch, max_rows, False

    def __getattr__(self, name):
        return getattr(self.batch, name)

    def __len__(self) -> int:
        n = len(self.batch)
        return self.max_rows if self.stepped and n else n  # full to the scheduler until it empties

    def step(self):
        done = self.batch.step()
        self.stepped = bool(len(self.batch))
        return done


def poisson(service, n: int, gap: float, tokens: int, seed: int) -> list[float]:
    """n requests at exponential gaps (mean `gap` s) -> each one's seconds per generated token."""
    from greedyscore.types import Message, Settings

    rng = random.Random(seed)
    starts, t = [], 0.0
    for _ in range(n):
        starts.append(t)
        t += rng.expovariate(1 / gap)
    out: list[float] = [0.0] * n
    t0 = time.perf_counter()

    def one(i: int) -> None:
        time.sleep(max(0.0, t0 + starts[i] - time.perf_counter()))
        s = time.perf_counter()
        reply = service.chat([Message("user", PROMPTS[i % len(PROMPTS)])], Settings(max_new_tokens=tokens))
        out[i] = (time.perf_counter() - s) / len(reply.tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return out


def together(service, users: int, tokens: int) -> float:
    from benchmarks.bench_load import load

    return load(service, users, 1, tokens)["tps"]


def single_stream(engine, tokens: int) -> dict[str, float]:
    """s per token: our loop (scored, the lean Llama step) vs HF generate (unscored) vs the bare
    forward, with the engine's CPU layout (engines/layout.py: the C kernel) and the model as loaded."""
    import torch
    from transformers import DynamicCache, GenerationConfig

    from greedyscore.engines.base import GenerateRequest
    from greedyscore.types import Message

    prompt = engine.tokenizer.prompt_ids([Message("user", PROMPTS[0])])
    model = engine.model

    def ours() -> None:
        engine.generate_batch([GenerateRequest(tuple(prompt), tokens, 5)])

    def hf() -> None:
        cfg = GenerationConfig(do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                               pad_token_id=engine.pad_id, eos_token_id=sorted(engine.info.stop_ids))
        with torch.inference_mode():
            ids = torch.tensor([prompt])
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)

    from transformers import AutoModelForCausalLM

    as_loaded = AutoModelForCausalLM.from_pretrained(engine.info.source, dtype=torch.float32).eval()

    def bare(m=model) -> None:
        with torch.inference_mode():
            cache = DynamicCache(config=m.config)
            m(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True, logits_to_keep=1)
            tok = torch.tensor([[prompt[-1]]])
            for _ in range(tokens):
                m(input_ids=tok, cache=cache, use_cache=True)

    fns = {"ours": ours, "hf": hf, "bare": bare, "as_loaded": lambda: bare(as_loaded)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(3):  # interleaved
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t0) / tokens)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--gap", type=float, default=0.8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from greedyscore.service import Service
    from greedyscore.types import Message, Settings

    engine = fixed_length_engine()
    services = {"fixed batches": Service(FixedBatches(engine), max_batch=16),
                "continuous": Service(engine, max_batch=16)}
    solo: list[float] = []
    for i in range(3):
        s = time.perf_counter()
        services["continuous"].chat([Message("user", PROMPTS[i])], Settings(max_new_tokens=args.tokens))
        solo.append((time.perf_counter() - s) / args.tokens)
    solo_tok = statistics.median(solo)
    rows = []
    for name, service in services.items():
        lat = poisson(service, args.requests, args.gap, args.tokens, args.seed)
        p50, p95 = statistics.median(lat), percentile(lat, 0.95)
        tps = together(service, args.users, args.tokens)
        rows.append([name, f"{p50 * 1000:.0f} ({p50 / solo_tok:.2f}x)", f"{p95 * 1000:.0f} ({p95 / solo_tok:.2f}x)",
                     f"{tps:.1f}"])
        print(name, rows[-1], flush=True)
    one = single_stream(engine, 128)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    body = (
        f"Machine: {machine()}. Commit {git_rev()}. {args.requests} requests at Poisson times (mean gap "
        f"{args.gap} s, seed {args.seed}), {args.tokens} new tokens each, through Service.chat; solo = the same "
        f"request alone: {solo_tok * 1000:.0f} ms per token. Then {args.users} users at once.\n\n"
        + table(["policy", "latency per token p50 ms (vs solo)", "p95 ms (vs solo)",
                 f"{args.users} users at once, tok/s"], rows)
        + "\n\nSingle stream, 128 new tokens, median of 3 interleaved:\n\n"
        + table(["path", "ms per token", "tok/s"],
                [["our decode loop, every token scored", f"{one['ours'] * 1000:.1f}", f"{1 / one['ours']:.1f}"],
                 ["HF generate, unscored (the old path's core)", f"{one['hf'] * 1000:.1f}", f"{1 / one['hf']:.1f}"],
                 ["bare forward (the floor)", f"{one['bare'] * 1000:.1f}", f"{1 / one['bare']:.1f}"],
                 ["bare forward, the model as loaded (torch's own products, no kernel)",
                  f"{one['as_loaded'] * 1000:.1f}", f"{1 / one['as_loaded']:.1f}"]])
        + f"\n\nPeak resident memory of this process: {rss_mb:.0f} MB."
    )
    print(body)
    write_section("Continuous batching and the decode loop (bench_continuous.py)", body)


if __name__ == "__main__":
    main()
