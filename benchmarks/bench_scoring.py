"""Cost of scoring on top of greedy generation: plain vs ours (single pass, +verification) vs the seed recipe.

Prompt lengths 32 / 512 / 2,000 tokens, 128 new tokens, embedded model, float32 CPU. Times are
medians of interleaved repeats in one run; memory is the peak RSS a method adds over plain
generation at the same length, each measured in a fresh process.

--divergence: the Compare tab's per-step divergence instead, a 500-token text under float32 (A)
and bfloat16 (B): the two scorings against the divergence's own pass over both sides' logit rows.

    python benchmarks/bench_scoring.py [--repeats 3] [--lengths 32,512,2000]
    python benchmarks/bench_scoring.py --divergence [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import filler_prompt, fixed_length_engine, git_rev, machine, median, table, write_section  # noqa: E402

NEW = 128
METHODS = ("plain", "single", "verify", "seed")


@torch.inference_mode()
def run(engine, method: str, prompt: list[int]) -> None:
    """One request by `method`; all produce the same 128 greedy tokens."""
    from transformers import GenerationConfig

    if method == "plain":
        config = GenerationConfig(do_sample=False, max_new_tokens=NEW, eos_token_id=sorted(engine.info.stop_ids),
                                  pad_token_id=engine.pad_id)
        ids = torch.tensor([prompt])
        engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        return
    if method == "seed":  # generate, then the whole sequence again and a softmax over [prompt+reply, vocab]
        config = GenerationConfig(do_sample=False, max_new_tokens=NEW, eos_token_id=sorted(engine.info.stop_ids),
                                  pad_token_id=engine.pad_id)
        ids = torch.tensor([prompt])
        seq = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        probs = torch.softmax(engine.model(seq).logits[0].float(), dim=-1)
        reply = seq[0, len(prompt):]
        _ = probs[torch.arange(len(prompt) - 1, seq.shape[1] - 1), reply].tolist()
        return
    from greedyscore.engines.base import GenerateRequest

    gen = engine.generate_batch([GenerateRequest(tuple(prompt), NEW, 5)])[0]
    assert len(gen.token_ids) == NEW
    if method == "verify":
        engine.score_ids(prompt, gen.token_ids, 5, cache=gen.cache)


def rss_peak_mb(fn) -> float:
    """Peak resident memory while fn runs, sampled every 0.5 ms from /proc/self/statm."""
    page = os.sysconf("SC_PAGE_SIZE") / 2**20
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        with open("/proc/self/statm") as f:
            while not done.is_set():
                f.seek(0)
                peak[0] = max(peak[0], int(f.read().split()[1]) * page)
                time.sleep(0.0005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return peak[0]


def memory_child(method: str, length: int) -> None:
    """In a fresh process: the peak of `method` minus the peak of plain generation (run twice first,
    so the allocator already holds what plain generation needs)."""
    engine = fixed_length_engine()
    prompt = filler_prompt(engine.tokenizer, length)
    run(engine, "plain", prompt)
    base = rss_peak_mb(lambda: run(engine, "plain", prompt))
    peak = rss_peak_mb(lambda: run(engine, method, prompt))
    print(json.dumps({"extra_mb": max(0.0, peak - base)}))


def memory(method: str, length: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-child", method, str(length)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["extra_mb"]


def maths_times(n: int, vocab: int, k: int, repeats: int) -> list[float]:
    """Seconds of `step_rows` over n rows of random float32 logits, 16 rows at a time (the model left out)."""
    from greedyscore.divergence import step_rows
    from greedyscore.scoring import CHUNK_ROWS

    g = torch.Generator().manual_seed(0)
    rows = [(torch.randn(min(CHUNK_ROWS, n - i), vocab, generator=g) * 3,
             torch.randn(min(CHUNK_ROWS, n - i), vocab, generator=g) * 3) for i in range(0, n, CHUNK_ROWS)]
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for ra, rb in rows:
            step_rows(ra, rb, k)
        out.append(time.perf_counter() - t0)
    return out


def divergence_bench(repeats: int, n_tokens: int = 500) -> None:
    """Times of scoring the text on A, on B, and of the per-step divergence (both sides' rows again,
    compared chunk by chunk), interleaved; the divergence's numbers, to see what it found."""
    from benchmarks.common import PROSE
    from greedyscore.divergence import divergence
    from greedyscore.engines.transformers import TransformersEngine
    from greedyscore.service import Service
    from greedyscore.types import Message, Settings
    from greedyscore.variants import Variants

    main_service = Service(TransformersEngine.load(None, device="cpu"))
    variants = Variants(main_service)
    other = variants.side("bfloat16").service
    tok = main_service.engine.tokenizer
    text = tok.decode(tok.text_ids(PROSE * (n_tokens // 8 + 10))[1][:n_tokens])
    after, settings = [Message("user", "Write about a river town.")], Settings(top_k=5)
    times: dict[str, list[float]] = {"A": [], "B": [], "divergence": []}
    for i in range(repeats + 1):  # the first round warms up, not counted
        t0 = time.perf_counter()
        a = main_service.score_text(text, settings, messages=after)
        t1 = time.perf_counter()
        b = other.score_text(text, settings, messages=after)
        t2 = time.perf_counter()
        found, why = divergence(main_service, a, other, b, settings.top_k)
        t3 = time.perf_counter()
        assert found is not None, why
        if i:
            for name, t in (("A", t1 - t0), ("B", t2 - t1), ("divergence", t3 - t2)):
                times[name].append(t)
    for service in (*variants.loaded(), main_service):
        service.close()
    times["maths"] = maths_times(len(a.tokens), main_service.info.vocab_size, settings.top_k, repeats)
    ms = {name: median(ts) * 1000 for name, ts in times.items()}
    row = [str(len(a.tokens)), f"{ms['A']:.0f}", f"{ms['B']:.0f}", f"{ms['divergence']:.0f}", f"{ms['maths']:.0f}",
           f"{ms['divergence'] / (ms['A'] + ms['B']):.2f}", f"{found.mean_kl:.4f}",
           f"{found.steps[found.max_at].kl:.3f}", str(len(found.differs_at)), f"{found.mean_overlap:.1%}"]
    header = ["text tokens", "score A (float32) ms", "score B (bfloat16) ms", "divergence ms", "of which maths ms",
              "divergence / both scorings", "mean KL nats", "max KL nats", "greedy differs", "top-5 overlap"]
    body = (f"Machine: {machine()}. Commit {git_rev()}. The embedded model, a {len(a.tokens)}-token text after "
            f"a one-line prompt, median of {repeats} interleaved runs after a warm-up. The divergence reads "
            "both sides' raw logit rows again (a teacher-forced pass each, 64 rows at a time on each "
            "Service's scheduler) and computes KL(A||B) in float64 over the whole vocabulary, the top-5 "
            "overlap and both argmaxes, 16 rows at a time; its maths alone (`step_rows` on as many rows of "
            "random logits) is timed apart.\n\n" + table(header, [row]))
    print(body)
    write_section("Per-step divergence, float32 vs bfloat16 (bench_scoring.py --divergence)", body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lengths", default="32,512,2000")
    ap.add_argument("--divergence", action="store_true", help="the Compare tab's per-step divergence instead")
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return
    if args.divergence:
        divergence_bench(args.repeats)
        return
    lengths = [int(x) for x in args.lengths.split(",")]
    engine = fixed_length_engine()
    rows = []
    for length in lengths:
        prompt = filler_prompt(engine.tokenizer, length)
        assert len(prompt) == length, len(prompt)
        run(engine, "single", prompt)  # warm-up
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        for _ in range(args.repeats):  # interleaved, so drift hits every method alike
            for m in METHODS:
                t0 = time.perf_counter()
                run(engine, m, prompt)
                times[m].append(time.perf_counter() - t0)
        plain = median(times["plain"])
        mem = {m: memory(m, length) for m in ("single", "verify", "seed")}
        row = [str(length), f"{plain:.2f}"]
        for m in ("single", "verify", "seed"):
            t = median(times[m])
            row += [f"{t:.2f} ({(t / plain - 1) * 100:+.1f}%)", f"{mem[m]:.0f}"]
        rows.append(row)
        print(" | ".join(row), flush=True)
    header = ["prompt tokens", "plain s", "single pass s", "MB", "+verify s", "MB", "seed recipe s", "MB"]
    body = (f"Machine: {machine()}. Commit {git_rev()}. 128 new tokens, median of {args.repeats} interleaved "
            f"runs; MB = peak resident memory added over plain generation at that length "
            f"(fresh process each, sampled every 0.5 ms).\n\n" + table(header, rows))
    print(body)
    write_section("Scoring overhead (bench_scoring.py)", body)


if __name__ == "__main__":
    main()
