"""The stream's own cost: incremental detokenisation, and Service.stream on top of the bare engine.

1. Detokenising a reply as it streams, N tokens of real text (English, Chinese, emoji) through
   the embedded tokenizer: decoding the whole reply at every step (what the stream did before)
   vs `Detokenizer.push` (a short window per step).
2. One 128-token greedy turn: `engine.generate_batch` alone (single-pass scores, no service) vs
   `Service.stream` drained (worker thread, deltas, scoring into a ScoredReply), interleaved.

    python benchmarks/bench_stream.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import fixed_length_engine, git_rev, machine, table, write_section  # noqa: E402

TEXT = ("The river valley has many towns; each keeps its own market day. "
        "河谷里有许多小镇，每个小镇都有自己的集市日。 Songs 🎶 and bridges 🌉 tie them together. ") * 200


def whole_reply_per_step(engine, ids: list[int]) -> None:
    plain: list[int] = []
    for tok in ids:
        if not engine.tokenizer.is_special(tok):
            plain.append(tok)
        engine.tokenizer.decode(plain)


def windowed(engine, ids: list[int]) -> None:
    from greedyscore.detokenize import Detokenizer

    d = Detokenizer(engine.tokenizer.decode, engine.tokenizer.is_special)
    for tok in ids:
        d.push(tok)


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from greedyscore.engines.base import GenerateRequest
    from greedyscore.service import Service
    from greedyscore.types import Message, Settings

    engine = fixed_length_engine()
    ids_all = engine.tokenizer.text_ids(TEXT)[1]
    detok_rows = []
    for n in (500, 2000):
        ids = ids_all[:n]
        old = statistics.median(timed(whole_reply_per_step, engine, ids) for _ in range(args.repeats))
        new = statistics.median(timed(windowed, engine, ids) for _ in range(args.repeats))
        detok_rows.append([str(n), f"{old * 1000:.0f} ms ({old / n * 1e6:.0f} µs/token)",
                           f"{new * 1000:.0f} ms ({new / n * 1e6:.0f} µs/token)", f"{old / new:.1f}x"])
        print(" | ".join(detok_rows[-1]), flush=True)

    service = Service(engine)
    settings = Settings(max_new_tokens=128, top_k=5)
    messages = [Message("user", "Tell me about rivers.")]
    request = GenerateRequest(tuple(engine.tokenizer.prompt_ids(messages)), 128, 5)  # the same ids the service sends
    bare, streamed = [], []
    service.chat(messages, Settings(max_new_tokens=8))  # warm-up
    for _ in range(args.repeats):
        bare.append(timed(engine.generate_batch, [request]))
        t0 = time.perf_counter()
        n_deltas = sum(1 for e in service.stream(messages, settings) if getattr(e, "delta", ""))
        streamed.append(time.perf_counter() - t0)
    b, s = statistics.median(bare), statistics.median(streamed)
    turn_rows = [["128", f"{b:.2f} s", f"{s:.2f} s ({(s / b - 1) * 100:+.1f}%)", str(n_deltas)]]
    print(" | ".join(turn_rows[0]), flush=True)
    body = (f"Machine: {machine()}. Commit {git_rev()}. Medians of {args.repeats}.\n\n"
            "Detokenising a streamed reply (embedded tokenizer, English + Chinese + emoji):\n\n"
            + table(["tokens", "whole reply decoded per step (before)", "Detokenizer window per step", "speed-up"],
                    detok_rows)
            + "\n\nOne greedy turn on the same prompt ids, interleaved runs, exactly 128 new tokens each:\n\n"
            + table(["new tokens", "engine.generate_batch alone", "Service.stream drained", "text deltas streamed"],
                    turn_rows))
    print(body)
    write_section("Streaming (bench_stream.py)", body)


if __name__ == "__main__":
    main()
