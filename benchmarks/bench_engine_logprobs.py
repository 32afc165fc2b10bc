"""How far LMDeploy's own logprobs may sit from greedyscore's rescoring when the PyTorch engine
computes them in a 16-bit dtype: the tolerance its cross-check needs (ENGINE_LOGPROB_TOLERANCE).

On the CPU stand-in (lmdeploy 0.18's real Pipeline/AsyncEngine code, the embedded model in
bfloat16): the engine's raw_logprobs (`log_softmax` in the model's dtype, on each decode step's
logits, as FusedLogitsProcessor does) against the float32 softmax of one prefill's logits (what
greedyscore rescores), as |Δp| of each chosen token; and the part that is the log-softmax's
rounding alone (the same decode-step logits in float32).

    python benchmarks/bench_engine_logprobs.py
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from benchmarks.common import git_rev, machine, table, write_section  # noqa: E402

N_NEW = 48


def measure(dtype) -> tuple[list[float], list[float]]:
    """(|Δp| engine vs rescoring, |Δp| of the rounding alone), one per generated token."""
    import lmdeploy_standin
    import torch
    from cases import CONVERSATIONS, generate
    from lmdeploy_standin import StandinPipeline

    from greedyscore.engines.lmdeploy import LMDeployEngine
    from greedyscore.engines.transformers import TransformersEngine
    from greedyscore.models import EMBEDDED_NAME, resolve_model

    rounding: list[float] = []
    plain = lmdeploy_standin.TransformersBackend.logprob_row

    def row(self, logits, chosen, k):  # the engine's row, and what float32 would have said
        out = plain(self, logits, chosen, k)
        exact = float(torch.log_softmax(logits.float(), -1)[chosen])
        rounding.append(abs(math.exp(out[chosen]) - math.exp(exact)))
        return out

    lmdeploy_standin.TransformersBackend.logprob_row = row
    tf = TransformersEngine.load(None, device="cpu")
    pipe = StandinPipeline(resolve_model(None)[1], copy.deepcopy(tf.model).to(dtype), backend="pytorch")
    try:
        lm = LMDeployEngine(pipe, EMBEDDED_NAME, "pytorch")
        total: list[float] = []
        for messages in CONVERSATIONS.values():
            prompt = lm.tokenizer.prompt_ids(messages)
            gen = generate(lm, prompt, N_NEW, 5)
            steps = lm.score_ids(prompt, list(gen.token_ids), 5)
            total += [abs(math.exp(gen.engine_logprobs[i][t]) - math.exp(float(steps.logprob[i])))
                      for i, t in enumerate(gen.token_ids)]
    finally:
        pipe.close()
        lmdeploy_standin.TransformersBackend.logprob_row = plain
    return total, rounding


def main() -> None:
    import torch

    from greedyscore.scoring import ENGINE_LOGPROB_TOLERANCE

    total, rounding = measure(torch.bfloat16)
    q = sorted(total)
    rows = [["bfloat16", str(len(total)), f"{max(total):.4f}", f"{q[int(0.95 * len(q))]:.4f}",
             f"{statistics.median(total):.4f}", f"{max(rounding):.4f}", str(sum(d > 1e-3 for d in total)),
             f"{ENGINE_LOGPROB_TOLERANCE['bfloat16']:g}"]]
    body = (f"Machine: {machine()}. Commit {git_rev()}. The embedded model in bfloat16 on the CPU stand-in, "
            f"{N_NEW} new tokens on each test conversation. Δp: the absolute difference in probability of each "
            "chosen token, the engine's raw_logprobs (model dtype, decode step) against greedyscore's rescoring "
            "(float32 softmax of a prefill), and of the rounding alone. float16 does not run on these CPUs (the "
            "native kernels refuse it); a GPU run should measure both.\n\n"
            + table(["dtype", "tokens", "max Δp", "p95 Δp", "median Δp", "rounding alone, max Δp", "Δp over 1e-3",
                     "tolerance used"], rows))
    print(body)
    write_section("The engine's own logprobs in 16 bits (bench_engine_logprobs.py)", body)


if __name__ == "__main__":
    main()
