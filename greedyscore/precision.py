"""How far a lower-precision model's scores are from float32's: measured once, at load.

Why: bfloat16 runs faster on CPUs with bf16 instructions, but its probabilities are not the
float32 model's. The UI says so with a number: the largest and mean |Δp| of the chosen tokens
over a few probe replies, the bfloat16 engine's own scores against the float32 model's
teacher-forced scores of the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from .engines.base import GenerateRequest
from .types import Message

PROBES = ("Tell me about rivers.", "What is 17 times 23?", "你好，请介绍一下你自己")
PROBE_TOKENS = 32


@dataclass(frozen=True)
class Drift:
    max_dp: float
    mean_dp: float
    tokens: int
    precision: str

    def note(self) -> str:
        return (f"{self.precision}, approximate: |Δp| vs float32 max {self.max_dp:.3f}, mean {self.mean_dp:.4f} "
                f"(measured at load on {self.tokens} tokens)")


def measure_drift(engine, reference, precision: str, probes: tuple[str, ...] = PROBES,
                  tokens: int = PROBE_TOKENS) -> Drift:
    """|Δp| of the chosen tokens: `engine`'s greedy replies to `probes`, scored by itself and by
    `reference` (float32) with teacher forcing."""
    deltas: list[float] = []
    for text in probes:
        prompt = tuple(engine.prompt_ids([Message("user", text)]))
        (gen,) = engine.generate_batch([GenerateRequest(prompt, tokens, 1)])
        ref = reference.score_ids(prompt, gen.token_ids, 1)
        deltas += (gen.steps.logprob.exp() - ref.logprob.exp()).abs().tolist()
    return Drift(max(deltas), sum(deltas) / len(deltas), len(deltas), precision)


def load_lower_precision(model: str | None, precision: str = "bfloat16"):
    """The transformers engine in `precision` (`--dtype`), its drift from float32 measured and
    written into its score source (what the UI's model line and every reply show).

    Refused on a CPU without bfloat16 instructions: there torch has no fast bfloat16 arithmetic
    (its prefill and the model's other operations run slower than in float32). The float32
    reference is loaded beside the model for the measurement, then freed: the load's peak memory
    is about 1.5x the float32 model's."""
    import gc
    import sys

    import torch

    from .cpu import bf16_instructions
    from .engines.transformers import TransformersEngine
    from .errors import EngineUnavailable

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and precision == "bfloat16" and not bf16_instructions():
        raise EngineUnavailable("--dtype bfloat16 needs a CPU with bfloat16 instructions (avx512_bf16, amx_bf16 or "
                                "Arm's bf16); this one has none, so torch would emulate bfloat16 arithmetic, "
                                "slower than float32: leave --dtype at float32")
    engine = TransformersEngine.load(model, device=device, precision=precision)
    print(f"greedyscore: measuring {precision} against float32 ...", file=sys.stderr, flush=True)
    reference = TransformersEngine.load(engine.source, device=device, precision="float32")
    drift = measure_drift(engine, reference, precision)
    del reference
    gc.collect()
    engine.drift = drift
    engine.score_source = f"{engine.score_source}; {drift.note()}"
    print(f"greedyscore: {drift.note()}", file=sys.stderr, flush=True)
    return engine
