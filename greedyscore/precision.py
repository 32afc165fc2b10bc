"""How far a lower-precision model's scores are from float32's, measured once at load: bfloat16 is
faster on CPUs with bf16 instructions, but its probabilities are not float32's, and the UI says by
how much (max and mean |Δp| of the chosen tokens over a few probe replies).
"""

from __future__ import annotations

import gc
import sys

from .engines import Engine, load_engine
from .engines.base import Drift, GenerateRequest
from .types import Message

__all__ = ["Drift", "drift_from_float32", "load_lower_precision", "measure_drift"]

PROBES = ("Tell me about rivers.", "What is 17 times 23?", "你好，请介绍一下你自己")
PROBE_TOKENS = 32


def measure_drift(engine: Engine, reference: Engine, precision: str, probes: tuple[str, ...] = PROBES,
                  tokens: int = PROBE_TOKENS) -> Drift:
    """|Δp| of the chosen tokens: `engine`'s greedy replies to `probes`, scored by itself and by
    `reference` (float32) with teacher forcing."""
    deltas: list[float] = []
    for text in probes:
        prompt = tuple(engine.tokenizer.prompt_ids([Message("user", text)]))
        (gen,) = engine.generate_batch([GenerateRequest(prompt, tokens, 1)])
        ref = reference.score_ids(prompt, gen.token_ids, 1)
        deltas += (gen.steps.logprob.exp() - ref.logprob.exp()).abs().tolist()
    return Drift(max(deltas), sum(deltas) / len(deltas), len(deltas), precision)


def drift_from_float32(engine: Engine, device: str) -> Drift:
    """`engine`'s drift from its own weights in float32, loaded beside it and then freed (peak ~1.5x)."""
    print(f"greedyscore: measuring {engine.info.precision} against float32 ...", file=sys.stderr, flush=True)
    reference = load_engine("transformers", engine.info.source, device=device)
    drift = measure_drift(engine, reference, engine.info.precision)
    del reference
    gc.collect()
    print(f"greedyscore: {drift.note()}", file=sys.stderr, flush=True)
    return drift


def load_lower_precision(model: str | None, precision: str = "bfloat16") -> Engine:
    """The transformers engine in `precision` (`--dtype`), its drift from float32 measured at load;
    refused on a CPU without bfloat16 instructions (torch would run slower than in float32)."""
    import torch

    from .cpu import bf16_instructions
    from .errors import EngineUnavailable

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and precision == "bfloat16" and not bf16_instructions():
        raise EngineUnavailable("--dtype bfloat16 needs a CPU with bfloat16 instructions (avx512_bf16, amx_bf16 or "
                                "Arm's bf16); this one has none, so torch would emulate bfloat16 arithmetic, "
                                "slower than float32: leave --dtype at float32")
    return load_engine("transformers", model, device=device, precision=precision, drift=True)
