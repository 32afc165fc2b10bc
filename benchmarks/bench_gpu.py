"""Scoring overhead on LMDeploy's PyTorch engine (issue 21 part 5): plain greedy against greedyscore.

Same pipeline, same run, interleaved after a warm-up: plain greedy (`AsyncEngine.generate` over our
prompt ids) against greedyscore (`LMDeployEngine.generate_batch`, top-5, then the service's work per
reply), exactly `--new` tokens each, on $GREEDYSCORE_GPU_MODEL and a random model of Llama-3-8B's shape.

    python benchmarks/bench_gpu.py --results $OUT/RESULTS.md   # on a GPU (make gpu-check)
    python benchmarks/bench_gpu.py --standin                   # the same code on the CPU stand-in, tiny sizes
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import benchmarks.common as common  # noqa: E402
from greedyscore.engines.lmdeploy import LMDeployEngine, engine_settings  # noqa: E402

SETTINGS = dict(cache_max_entry_count=0.5, max_batch_size=64, session_len=4096)  # the pipeline both modes share
BAR_ONE, BAR_MANY = 5.0, 10.0  # overhead bars in %: one user, more users
LLAMA3_8B = dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
                 num_key_value_heads=8)
TINY = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
STANDIN = dict(prompt=64, new=8, users=[1, 4], reps=2)
DEVICE = dict(prompt=2000, new=128, users=[1, 32], reps=3)
BUILD_NEED_S = 75.0  # about what building, saving and loading the 8B-shape model takes of the budget
EAGER_NEED_S = 30.0  # and the eager-mode load of the first model, for comparison


@dataclass
class Side:
    """One mode's measured runs in a cell: times, GPU memory in MiB (peak allocated, its rise in a
    run, nvidia-smi used), logits tensors that reached the CPU and rescorings (score_ids calls)."""

    n_new: int
    walls: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    peak: float = 0.0
    added: float = 0.0
    smi: float = 0.0
    tensors: int = 0
    bytes: int = 0
    prompt_rows: int = 0  # tensors with more rows than a reply has: a [P+G, vocab] crossed
    rescored: int = 0

    def see(self, t: Any) -> None:
        """Count `t` if it is a CPU [rows, vocab] tensor."""
        if isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dim() == 2:
            self.tensors, self.bytes = self.tensors + 1, self.bytes + t.numel() * t.element_size()
            self.prompt_rows += int(t.shape[0] > self.n_new)


def instrument(engine: LMDeployEngine, n_new: int) -> SimpleNamespace:
    """Wrap the pipeline's async_get_logits and generate (CPU logits counted) and the engine's
    score_ids (rescorings counted) into `slot.side`; every request gets ignore_eos."""
    slot = SimpleNamespace(side=Side(n_new))
    eng = engine.pipe.async_engine
    gen, get_logits, pre, score = eng.generate, eng.async_get_logits, eng.preprocess, engine.score_ids

    async def generate(*a: Any, **kw: Any):
        async for out in gen(*a, **kw):
            slot.side.see(getattr(out, "logits", None))
            yield out

    async def async_get_logits(*a: Any, **kw: Any) -> list:
        outs = await get_logits(*a, **kw)
        for t in outs:
            slot.side.see(t)
        return outs

    async def preprocess(*a: Any, **kw: Any) -> Any:
        cfg = kw.get("gen_config", a[2] if len(a) > 2 else None)
        if cfg is not None:
            cfg.ignore_eos = True  # exactly n_new tokens (lmdeploy masks the stop ids instead)
        return await pre(*a, **kw)

    def score_ids(*a: Any, **kw: Any) -> Any:
        slot.side.rescored += 1
        return score(*a, **kw)

    eng.generate, eng.async_get_logits, eng.preprocess = generate, async_get_logits, preprocess
    engine.score_ids = score_ids  # type: ignore[method-assign]
    return slot


async def plain_one(engine: LMDeployEngine, prompt: list[int], n_new: int) -> tuple[int, float]:
    """Plain greedy of `prompt` on the same pipeline, no scores: -> (tokens, time to first token)."""
    from lmdeploy import GenerationConfig

    t0, first, n = time.perf_counter(), 0.0, 0
    eng = engine.pipe.async_engine
    cfg = GenerationConfig(do_sample=False, max_new_tokens=n_new, ignore_eos=True)
    request = await eng.preprocess(None, engine.pipe.session(), cfg, input_ids=list(prompt))
    async for out in eng.generate(request, stream_response=True):
        if out.token_ids and not first:
            first = time.perf_counter() - t0
        n += len(out.token_ids or [])
    return n, first


def scored_one(engine: LMDeployEngine, prompt: list[int], n_new: int, top_k: int = 5) -> tuple[int, float]:
    """What the service does per reply: generate_batch, its scores (Generation.steps, else a
    rescoring), the engine-logprob check, ScoredTokens -> (tokens, time to first token)."""
    from greedyscore.detokenize import token_texts
    from greedyscore.engines.base import GenerateRequest
    from greedyscore.scoring import build_tokens, compare_engine_logprobs
    from greedyscore.types import Settings

    t0, first = time.perf_counter(), []

    def on_ids(_: list[int]) -> None:
        if not first:
            first.append(time.perf_counter() - t0)

    gen = engine.generate_batch([GenerateRequest(tuple(prompt), n_new, top_k, on_ids)])[0]
    ids = list(gen.token_ids)
    steps = gen.steps if gen.steps is not None else engine.score_ids(prompt, ids, top_k)
    if gen.engine_logprobs is not None:
        tolerance = max(Settings().tolerance, engine.info.logprob_tolerance)
        compare_engine_logprobs(gen.engine_logprobs, ids, steps, tolerance)
    tok = engine.tokenizer
    texts = token_texts(ids, tok.decode, tok.is_special)
    return len(build_tokens(ids, steps, texts, tok.is_special, tok.display)), first[0] if first else 0.0


def nvidia_smi_mib() -> float:
    """Memory used on the GPU (all processes) in MiB, 0 without nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return 0.0
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout.split()
    return float(out[0]) if out else 0.0


def run(engine: LMDeployEngine, mode: str, prompts: list[list[int]], n_new: int, pool: ThreadPoolExecutor,
        side: Side) -> None:
    """Every user at once in one mode (plain: coroutines on the pipeline's loop; greedyscore: a
    thread per user, as the service calls it), recorded into `side`."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start_mib = torch.cuda.memory_allocated() / 2**20 if cuda else 0.0
    t0 = time.perf_counter()
    if mode == "plain":
        async def users() -> list[tuple[int, float]]:
            return await asyncio.gather(*[plain_one(engine, p, n_new) for p in prompts])

        results = asyncio.run_coroutine_threadsafe(users(), engine.pipe.internal_thread.loop).result(timeout=600)
    else:
        results = list(pool.map(lambda p: scored_one(engine, p, n_new), prompts))
    side.walls.append(time.perf_counter() - t0)
    side.tokens.append(sum(n for n, _ in results))
    side.ttft += [t for _, t in results]
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
        side.peak, side.added = max(side.peak, peak), max(side.added, peak - start_mib)
        side.smi = max(side.smi, nvidia_smi_mib())


def cell(engine: LMDeployEngine, slot: SimpleNamespace, prompts: list[list[int]], args: argparse.Namespace
         ) -> dict[str, Side]:
    """A warm-up of each mode, then up to `reps` interleaved pairs (order alternating) while the budget lasts."""
    sides = {m: Side(args.new) for m in ("plain", "greedyscore")}
    with ThreadPoolExecutor(len(prompts)) as pool:
        for mode in sides:
            slot.side = Side(args.new)
            run(engine, mode, prompts, args.new, pool, slot.side)
        for rep in range(args.reps):
            if rep and left(args) < 0:
                break
            for mode in ("plain", "greedyscore") if rep % 2 == 0 else ("greedyscore", "plain"):
                slot.side = sides[mode]
                run(engine, mode, prompts, args.new, pool, sides[mode])
    return sides


HEADER = ["model", "users", "pairs", "plain tok/s", "greedyscore tok/s", "overhead (bar)", "TTFT p50 ms plain / gs",
          "GPU peak MiB plain / gs (rise in a run)", "nvidia-smi MiB", "CPU logits (gs)", "[P+G, vocab] to CPU",
          "scores", "exact lengths"]


def summary(label: str, users: int, n_new: int, sides: dict[str, Side]) -> list[str]:
    """One table row of a cell."""
    p, g = sides["plain"], sides["greedyscore"]
    over = (common.median(g.walls) / common.median(p.walls) - 1) * 100
    bar = BAR_ONE if users == 1 else BAR_MANY
    crossed = f"YES: {g.prompt_rows + p.prompt_rows}" if g.prompt_rows or p.prompt_rows else "no"
    scores = f"rescored {g.rescored}/{len(g.walls) * users}" if g.rescored else "single pass"
    exact = all(n == users * n_new for n in p.tokens + g.tokens)
    tps = [f"{common.median([n / w for n, w in zip(s.tokens, s.walls)]):.0f}" for s in (p, g)]
    return [label, str(users), str(len(g.walls)), *tps, f"{over:+.1f}% ({'ok' if over <= bar else 'OVER'}: <={bar:g}%)",
            f"{common.median(p.ttft) * 1e3:.0f} / {common.median(g.ttft) * 1e3:.0f}",
            f"{p.peak:.0f} / {g.peak:.0f} (+{p.added:.0f} / +{g.added:.0f})", f"{max(p.smi, g.smi):.0f}",
            f"{g.tensors} ({g.bytes / 2**20:.1f} MiB)", crossed, scores, "yes" if exact else "NO"]


def load(model_dir: str, standin: bool, eager: bool) -> tuple[LMDeployEngine, float]:
    """The engine as greedyscore loads it (PyTorch engine, raw logprobs, prefix caching off); -> (engine, s)."""
    t0 = time.perf_counter()
    if not standin:
        engine = LMDeployEngine.load(model_dir, engine="pytorch", eager_mode=eager, **SETTINGS)
        return engine, time.perf_counter() - t0
    from lmdeploy import PytorchEngineConfig
    from lmdeploy_standin import StandinPipeline
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = PytorchEngineConfig(logprobs_mode="raw_logprobs", **engine_settings("pytorch", eager_mode=eager, **SETTINGS))
    engine = LMDeployEngine(StandinPipeline(model_dir, model, backend_config=cfg), Path(model_dir).name, "pytorch")
    return engine, time.perf_counter() - t0


def prompts_for(engine: LMDeployEngine, n_tokens: int, users: int) -> list[list[int]]:
    """The same chat prompt of exactly n_tokens ids for every user (prefix caching is off)."""
    ids = common.filler_prompt(engine.tokenizer, n_tokens)
    assert len(ids) == n_tokens, len(ids)
    return [list(ids) for _ in range(users)]


def build_random(tok_dir: str, shape: dict[str, int], cpu: bool) -> tuple[str, float, int]:
    """A random-weight Llama of `shape` in bf16 (rope theta 500000, the tokenizer's vocab) made on the
    GPU (or CPU) without transformers' init, saved with tokenizer and generation config; -> (dir, s, params)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = LlamaConfig(vocab_size=len(tok), rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         **shape)
    with torch.device("cpu" if cpu else "cuda"), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).to("cpu" if cpu else "cuda")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0.0, 0.02)
    try:
        model.generation_config = GenerationConfig.from_pretrained(tok_dir)
    except OSError:  # the model dir has none
        model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    n = model.num_parameters()
    shm = Path("/dev/shm")  # a RAM disk where it has room: the 15 GB write and read are quicker there
    out = tempfile.mkdtemp(prefix="random-8b-shape-",
                           dir=str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > 3 * n * 2 else None)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, time.perf_counter() - t0, n


def stage(notes: list[str], what: str, fn: Callable[[], Any]) -> Any:
    """fn(), or None and a note (traceback on stderr) when it raises: a device run reports what
    failed and goes on; then the GPU memory of what it dropped is released."""
    try:
        return fn()
    except Exception as ex:  # noqa: BLE001
        traceback.print_exc()
        notes.append(f"{what}: failed: {type(ex).__name__}: {(str(ex).splitlines() or [''])[0]}")
        return None
    finally:
        release()


def release() -> None:
    """Give back the GPU memory of dropped models and closed pipelines (the wrappers make cycles)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def left(args: argparse.Namespace) -> float:
    """Seconds left of the budget."""
    return args.deadline - time.perf_counter()


def bench_model(label: str, model_dir: str, args: argparse.Namespace, rows: list[list[str]], notes: list[str]) -> None:
    """Load, then each users cell while the budget lasts; a failed cell is a note, not the end."""
    engine, load_s = load(model_dir, args.standin, args.eager)
    how = "the stand-in" if args.standin else "eager mode" if args.eager else "CUDA graphs"
    notes.append(f"{label}: loaded in {load_s:.1f} s ({how}); {engine.info.score_source}.")
    print(notes[-1], flush=True)
    slot = instrument(engine, args.new)
    try:
        for users in args.users:
            if left(args) < 0:
                notes.append(f"{label}, {users} users: skipped, over the {args.budget_s:.0f} s budget.")
                continue
            sides = stage(notes, f"{label}, {users} users",
                          lambda u=users: cell(engine, slot, prompts_for(engine, args.prompt, u), args))
            if sides is not None:
                rows.append(summary(label, users, args.new, sides))
                print(" | ".join(rows[-1]), flush=True)
    finally:
        engine.close()


def bench_random(name: str, model_dir: str, args: argparse.Namespace, rows: list[list[str]], notes: list[str]) -> None:
    """The random model of Llama-3-8B's shape (a tiny one on the stand-in), if the budget allows."""
    shape, label = (TINY, "random tiny Llama") if args.standin else (LLAMA3_8B, "random Llama-3-8B shape")
    if left(args) < (0 if args.standin else BUILD_NEED_S):
        notes.append(f"{label}: skipped, {max(left(args), 0):.0f} s of the budget left.")
        return
    out, build_s, n = build_random(model_dir, shape, args.standin)
    release()  # the built model, before LMDeploy measures the free memory for its KV cache
    notes.append(f"{label}: {n / 1e9:.2f} B parameters, {name}'s tokenizer, built and saved in {build_s:.1f} s.")
    try:
        bench_model(label, out, args, rows, notes)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def eager_load(name: str, model_dir: str, args: argparse.Namespace, notes: list[str]) -> None:
    """Load the first model again without CUDA graphs: what their capture costs at start-up."""
    engine, load_s = load(model_dir, args.standin, eager=True)
    engine.close()
    notes.append(f"{name}: loaded in {load_s:.1f} s in eager mode, for comparison.")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--standin", action="store_true", help="the CPU stand-in pipeline, tiny sizes and random model")
    ap.add_argument("--budget-s", type=float, default=180.0, help="skip the remaining cells past this")
    ap.add_argument("--results", help="write the RESULTS section here (default: benchmarks/RESULTS.md, GPU only)")
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs (a quicker start, slower decoding)")
    ap.add_argument("--models", default="gguf,8b", help="models, in order: gguf ($GREEDYSCORE_GPU_MODEL), 8b")
    for name in ("prompt", "new", "reps"):
        ap.add_argument(f"--{name}", type=int)
    ap.add_argument("--users", type=lambda s: [int(u) for u in s.split(",")], help="e.g. 1,32")
    args = ap.parse_args()
    for k, v in (STANDIN if args.standin else DEVICE).items():
        setattr(args, k, getattr(args, k) or v)
    args.deadline = time.perf_counter() + args.budget_s
    return args


def main() -> None:
    from greedyscore.models import resolve_model

    args = parse()
    rows: list[list[str]] = []
    notes: list[str] = []
    t0, source = time.perf_counter(), None if args.standin else os.environ.get("GREEDYSCORE_GPU_MODEL")
    resolved = stage(notes, f"resolving {source or 'the embedded model'}", lambda: resolve_model(source))
    if resolved is not None:
        name, model_dir = resolved
        notes.append(f"{name}: resolved to {model_dir} in {time.perf_counter() - t0:.1f} s.")
        for which in args.models.split(","):  # in the order given: the first gets the budget first
            if which == "gguf":
                stage(notes, name, lambda: bench_model(name, model_dir, args, rows, notes))
            elif which == "8b":
                stage(notes, "the random model", lambda: bench_random(name, model_dir, args, rows, notes))
        if not args.eager and left(args) > (0 if args.standin else EAGER_NEED_S):  # what CUDA graphs cost at start
            stage(notes, f"{name} in eager mode", lambda: eager_load(name, model_dir, args, notes))
    report(args, rows, notes)


def report(args: argparse.Namespace, rows: list[list[str]], notes: list[str]) -> None:
    """Print the table; write the RESULTS section (to --results, else benchmarks/RESULTS.md on a GPU)."""
    import lmdeploy
    import transformers

    gpu = ("no GPU: lmdeploy's real Pipeline/AsyncEngine over the CPU stand-in (tests/lmdeploy_standin.py)"
           if args.standin else torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
    body = (f"Machine: {common.machine()}, {gpu}, lmdeploy {lmdeploy.__version__}, transformers "
            f"{transformers.__version__}. Commit {common.git_rev()}. PyTorch engine, max_batch_size "
            f"{SETTINGS['max_batch_size']}, KV cache {SETTINGS['cache_max_entry_count']}, session_len "
            f"{SETTINGS['session_len']}, prefix caching off; {args.prompt}-token prompts (the same for every user), "
            "exactly "
            f"{args.new} new tokens (ignore_eos), top-5. plain: AsyncEngine.generate over the same ids; greedyscore: "
            "generate_batch, scores, ScoredTokens, a thread per user. tok/s: aggregate, median of the interleaved "
            "pairs after a warm-up; overhead: of the median wall time. CPU logits: tensors from async_get_logits or "
            "generate's outputs; [P+G, vocab] to CPU: those holding prompt rows.\n\n"
            + common.table(HEADER, rows) + "\n\n" + "\n".join(f"- {n}" for n in notes))
    print("\n" + body, flush=True)
    if args.results or not args.standin:
        results = Path(args.results) if args.results else common.RESULTS
        results.parent.mkdir(parents=True, exist_ok=True)
        suffix = " --standin" if args.standin else ""
        common.write_section(f"LMDeploy scoring overhead on a GPU (bench_gpu.py{suffix})", body, results)


if __name__ == "__main__":
    main()
