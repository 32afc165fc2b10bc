"""What a fork costs: `Service.fork` at a 500-token prefix vs generating the same path afresh.

A fork at position P of a reply re-uses the reply's first P tokens: they are scored teacher-forced
(one prefill) and the shared engine prefills them again to continue, instead of decoding them one
by one. Compared, interleaved, with a fresh greedy generation of the same number of tokens
(P + 1 + N) from the same prompt. The fixed-length engine never stops, so lengths are exact.

    python benchmarks/bench_fork.py [--prefix 500] [--new 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import fixed_length_engine, git_rev, machine, table, write_section  # noqa: E402

TEXT = "The river town grew around its stone bridge, its markets and its songs. " * 200


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefix", type=int, default=500)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from greedyscore.service import Service
    from greedyscore.types import Message, Settings

    engine = fixed_length_engine()
    service = Service(engine)
    messages = [Message("user", "Tell me about the river town.")]
    reply_ids = engine.tokenizer.text_ids(TEXT)[1][: args.prefix + 1]  # the original reply's tokens (any real text)
    swap = engine.tokenizer.text_ids(" bridge")[1][0]
    path = args.prefix + 1 + args.new
    service.chat(messages, Settings(max_new_tokens=4))  # warm-up
    fork_s, fresh_s, score_s = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fork = service.fork(messages, reply_ids, args.prefix, swap, Settings(max_new_tokens=args.new))
        fork_s.append(time.perf_counter() - t0)
        score_s.append(fork.timings.score_s)
        assert len(fork.tokens) == path, len(fork.tokens)  # noqa: S101
        t0 = time.perf_counter()
        fresh = service.chat(messages, Settings(max_new_tokens=path))
        fresh_s.append(time.perf_counter() - t0)
        assert len(fresh.tokens) == path  # noqa: S101
    f, g = statistics.median(fork_s), statistics.median(fresh_s)
    rows = [[f"{args.prefix}", f"{args.new}", f"{f:.2f} s", f"{g:.2f} s", f"{f / g:.2f}x"]]
    body = (f"Machine: {machine()}. Commit {git_rev()}. Medians of {args.repeats} interleaved runs; both paths are "
            f"{path} tokens long (prefix, the swapped token, {args.new} new).\n\n"
            + table(["prefix tokens", "new tokens", "Service.fork", "fresh greedy generation of the path",
                     "fork / fresh (target <= 0.6x)"], rows)
            + "\n\nThe prefix is not decoded again: it is scored in one teacher-forced pass and prefilled once to "
              "continue (no KV cache is kept across requests: a left-padded transformers batch cannot take a "
              "per-row cache).")
    print(body)
    write_section("Forking a reply (bench_fork.py)", body)


if __name__ == "__main__":
    main()
