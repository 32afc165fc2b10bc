"""The gate: the kernel is used only where it measures faster, on this machine, than the torch
path the engine would run instead. Why: the same C is faster where it was tuned (AVX-512) and can
be slower elsewhere (AVX2: two registers a vector, no fused multiply-adds; bench_native.py).

Timed is what decoding spends its time on: whole decode steps (`LlamaStep`) of a random Llama
with the embedded model's layer shapes (MODEL), ROWS rows, the C step against the same step over
`layout.torch_layout`, interleaved, the best of REPS, in the calling thread: the engine loads
(and so gates) in a thread of its own, in the state its decoding thread will be in (one OpenMP
pool: cpu.in_a_thread_of_its_own). Single products would mislead: oneDNN's bfloat16 product beats
the kernel's, yet its decode step (hundreds of torch calls, each an OpenMP region) can be slower
than the C step, whose barriers spin. The decision, per precision, thread count and
torch version, is kept beside the built library (`<library>.json`): a new source, compiler,
target or CPU measures again, a second load does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .kernel import Kernel

FORCE_ENV = "GREEDYSCORE_NATIVE"
ON, OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
MEASURED = "measured"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# The test model: 8 of SmolLM2-135M's layers and half its vocabulary (a tall output layer is where an
# AVX2 build loses most): large enough to stream from memory as a real model does (a smaller one stays
# in cache and flatters the kernel's slower builds).
MODEL = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
         "num_hidden_layers": 8, "vocab_size": 24576}
ROWS = (1, 8)  # one reply; a batch of eight
CONTEXT = 64  # cached positions each step attends to
REPS = 5
TIMED_IN = "the loading thread"  # before: a thread of its own beside the main one's OpenMP pool (torch throttled)

def forced() -> str:
    """$GREEDYSCORE_NATIVE as given, trimmed and lower-cased ("" when unset): in ON, OFF, or neither."""
    return os.environ.get(FORCE_ENV, "").strip().lower()


def clock(path: str, work: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    work()
    return time.perf_counter() - t0


@dataclass(frozen=True)
class Decision:
    """Whether the engine multiplies by its weights in the kernel, for one precision, and why."""

    precision: str
    march: str
    used: bool
    reason: str  # MEASURED, "GREEDYSCORE_NATIVE=1" or =0, "no C compiler", "could not build (...)"
    kernel_ms: float | None = None  # per step of the test model, the best of REPS (None: not measured)
    torch_ms: float | None = None
    threads: int = 0
    cached: bool = False  # read from the file beside the library, not measured in this process

    def note(self) -> str:
        """One line for the score source and --help."""
        what = f"CPU kernel (-march={self.march}) {'used' if self.used else 'not used'}"
        times = ("" if self.kernel_ms is None or self.torch_ms is None else
                 f"{self.kernel_ms:.1f} vs torch {self.torch_ms:.1f} ms per test step")
        if self.reason == MEASURED:
            return f"{what}: {times}"
        if self.reason.startswith(FORCE_ENV) and not self.used:
            return f"CPU kernel not used: {self.reason}"
        return f"{what}: {self.reason}" + (f" (measured {times})" if times else "")

    def log_line(self) -> str:
        """The line said on stderr when the engine is laid out."""
        return (f"greedyscore: {self.note()} ({self.precision}, {self.threads} threads"
                + ("; measured at its first load)" if self.cached else ")"))


def measure(kernel: Kernel, precision: str) -> tuple[float, float]:
    """(kernel, torch) ms per step of the test model (its ROWS steps together), the best of REPS
    interleaved runs each, timed in the calling thread (the one that loads the model)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..layout import torch_layout
    from ..llama_step import LlamaStep

    dtype = DTYPES[precision]
    cfg = LlamaConfig(**MODEL, max_position_embeddings=CONTEXT + 1, tie_word_embeddings=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval().to(dtype)
    steps = {"kernel": LlamaStep(model, kernel)}  # packed copies of the weights
    torch_layout(model, precision)
    steps["torch"] = LlamaStep(model, None)
    heads, head_dim = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads

    def work(path: str) -> Callable[[], None]:
        cache = torch.float32 if path == "kernel" else dtype  # the C step keeps float32 keys and values
        inputs = [(torch.full((r,), 7), torch.full((r,), CONTEXT), [torch.zeros(r, heads, CONTEXT + 1, head_dim,
                   dtype=cache) for _ in range(2 * cfg.num_hidden_layers)]) for r in ROWS]

        def run() -> None:
            with torch.inference_mode():
                for tokens, positions, kv in inputs:
                    steps[path](tokens, positions, None, kv[::2], kv[1::2], CONTEXT)
        return run

    runs = {path: work(path) for path in steps}
    best = {path: float("inf") for path in steps}

    for run in runs.values():
        run()  # warm-up
    for rep in range(REPS):  # interleaved, each first in turn: a busy moment of the machine hits both
        for path in ("kernel", "torch") if rep % 2 == 0 else ("torch", "kernel"):
            best[path] = min(best[path], clock(path, runs[path]))  # `clock`: a test may script it
    return best["kernel"] * 1000, best["torch"] * 1000


def choose(kernel: Kernel | None, why_not: str, precision: str, march: str) -> Decision:
    """The decision for `kernel` (None: it did not build, `why_not`): $GREEDYSCORE_NATIVE first,
    then the cached measurement, else a new one (cached). A measured decision is said on stderr."""
    force = forced()
    threads = torch.get_num_threads()
    if force in OFF:
        return Decision(precision, march, False, f"{FORCE_ENV}={force}", threads=threads)
    if kernel is None:
        return Decision(precision, march, False, why_not, threads=threads)
    known = cached(kernel.path, precision, march)
    if force in ON:
        return Decision(precision, march, True, f"{FORCE_ENV}={force}", known and known.kernel_ms,
                        known and known.torch_ms, threads, known is not None)
    decision = known
    if decision is None:
        kernel_ms, torch_ms = measure(kernel, precision)
        decision = Decision(precision, march, kernel_ms < torch_ms, MEASURED, kernel_ms, torch_ms, threads)
        _write(kernel.path, _entry(precision), decision)
    print(decision.log_line(), file=sys.stderr, flush=True)
    return decision


def cached(library: Path, precision: str, march: str) -> Decision | None:
    """The measured decision kept beside `library` for this precision, thread count and torch, if
    any (nothing is built or timed)."""
    known = _read(library).get(_entry(precision))
    if known is None:
        return None
    kernel_ms, torch_ms = float(known["kernel_ms"]), float(known["torch_ms"])
    return Decision(precision, march, kernel_ms < torch_ms, MEASURED, kernel_ms, torch_ms,
                    torch.get_num_threads(), cached=True)


def _entry(precision: str) -> str:
    """A decision's name in the file: what it depends on besides the library (the test itself too)."""
    how = [MODEL, ROWS, CONTEXT, REPS, TIMED_IN]
    test = hashlib.sha256(json.dumps(how, sort_keys=True).encode()).hexdigest()[:8]
    return f"{precision}, {torch.get_num_threads()} threads, torch {torch.__version__}, test {test}"


def _read(library: Path) -> dict:
    try:
        data = json.loads(library.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(data, dict) and all(isinstance(v, dict) and isinstance(v.get("kernel_ms"), float | int)
                                        and isinstance(v.get("torch_ms"), float | int) for v in data.values())
    return data if ok else {}


def _write(library: Path, entry: str, decision: Decision) -> None:
    store = library.with_suffix(".json")
    data = _read(library)
    data[entry] = {k: v for k, v in asdict(decision).items() if k in ("kernel_ms", "torch_ms", "used")}
    tmp = store.with_name(f"{store.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(store)  # atomic: another process may be measuring too
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only cache: measured again next time
