"""What step mode costs: one step (the path scored + the next-token distribution, one teacher-forced
pass) at several path lengths; a sampler change (the step's kept row looked at again); the sampler
lens along a path (from the kept top-k, and recomputed from whole rows when the kept ones cannot
represent the cut).

    python benchmarks/bench_steer.py [--lengths 0 100 500 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import git_rev, machine, median, table, write_section  # noqa: E402

TEXT = "The river town grew around its stone bridge, its markets and its songs. " * 200


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls (after one warm-up)."""
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[0, 100, 500, 1000])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from greedyscore.engines import load_engine
    from greedyscore.requests import Step
    from greedyscore.service import Service
    from greedyscore.steer import p_greedy_along, relook, step
    from greedyscore.types import Message, Sampler, Settings

    service = Service(load_engine("transformers", None, device="cpu"))
    messages = (Message("user", "Tell me about the river town."),)
    ids = service.tokenizer.text_ids(TEXT)[1]
    settings, sampler = Settings(max_new_tokens=1, top_k=5), Sampler(0.7, 0, 0.9)
    rows = []
    for n in args.lengths:
        request = Step(messages, tuple(ids[:n]), sampler=sampler, settings=settings)
        s = timed(lambda r=request: step(service, r), args.repeats)
        rows.append([f"step after {n} path tokens", f"{s * 1000:.0f} ms"])
    n = max(args.lengths)
    stepped = step(service, Step(messages, tuple(ids[:n]), settings=settings))
    path = stepped.path
    again = timed(lambda: relook(service, stepped, Sampler(0.5, 40, 0.8)), args.repeats)
    rows.append([f"a sampler change after {n} path tokens (the step's kept row, no model call)",
                 f"{again * 1000:.1f} ms"])
    prompt = path.prompt_token_ids
    kept = timed(lambda: p_greedy_along(service, prompt, path, Sampler(0.7, 3, 0.9)), args.repeats)
    full = timed(lambda: p_greedy_along(service, prompt, path, Sampler(0.7, 0, 0.9)), args.repeats)
    rows.append([f"sampler lens along {n} tokens, from the kept top-5 (top-k 3)", f"{kept * 1000:.1f} ms"])
    rows.append([f"sampler lens along {n} tokens, whole rows recomputed (temperature 0.7, top-p 0.9)",
                 f"{full * 1000:.0f} ms"])
    service.close()
    body = (f"Machine: {machine()}; git {git_rev()}. The embedded model in float32, medians of {args.repeats} "
            f"runs after a warm-up.\n\n" + table(["what", "time"], rows))
    print(body)
    write_section("Step mode (bench_steer.py)", body)


if __name__ == "__main__":
    main()
