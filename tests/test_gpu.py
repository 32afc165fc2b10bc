"""GPU tests: the real lmdeploy pipeline (TurboMind and PyTorch engines) against the TransformersEngine.

Run on a machine with a CUDA GPU: `make gpu test-gpu` (= `.venv/bin/python -m pytest tests/test_gpu.py -v`).
Skipped without CUDA or without lmdeploy.

LMDeploy runs the model in fp16/bf16, the oracle in float32, so greedy ids may part at a near
tie: we compare the first few ids, then the scores of the sequence lmdeploy actually generated,
rescored by the float32 oracle.
"""

from __future__ import annotations

import threading

import pytest
import torch
from cases import CONVERSATIONS, generate

from greedyscore.engines.lmdeploy import LMDeployEngine
from greedyscore.engines.transformers import TransformersEngine
from greedyscore.errors import EngineUnavailable
from greedyscore.scoring import ENGINE_LOGPROB_TOLERANCE, compare_engine_logprobs
from greedyscore.types import Message, Settings


def _skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    try:
        import lmdeploy  # noqa: F401
    except Exception as ex:  # ImportError, or a CUDA library it links against
        return f"lmdeploy does not import ({type(ex).__name__}): run `make gpu`"
    return None


SKIP = _skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]

# |p_lmdeploy - p_float32| for fp16/bf16 logits, and the gap a near tie may have: the embedded model
# in bf16 against float32 on a CPU (transformers both sides, the ids the bf16 model chose) already
# showed 0.040 and a rank gap of 0.029, over the 2e-2 this had: the engine cross-check's bound
TOL = ENGINE_LOGPROB_TOLERANCE["bfloat16"]
N_NEW = 32
FIRST_SAME = 4  # greedy ids that must agree before any near tie may part them
CASES = {k: CONVERSATIONS[k] for k in ("english", "chinese", "multi-turn", "emoji")}


@pytest.fixture(scope="module")
def oracle() -> TransformersEngine:
    return TransformersEngine.load(None, device="cuda")  # float32


@pytest.fixture(scope="module", params=["turbomind", "pytorch"])
def lm(request):
    try:
        engine = LMDeployEngine.load(None, engine=request.param, cache_max_entry_count=0.1)
    except EngineUnavailable as ex:
        pytest.fail(f"lmdeploy {request.param} did not start: {ex}")
    if engine.backend != f"lmdeploy-{request.param}":
        engine.close()
        pytest.skip(f"lmdeploy fell back to {engine.backend} for this model")
    yield engine
    engine.close()
    torch.cuda.empty_cache()


@pytest.mark.parametrize("case", list(CASES))
def test_prompt_ids_equal_transformers(lm, oracle, case):
    assert lm.prompt_ids(CASES[case]) == oracle.prompt_ids(CASES[case])


@pytest.mark.parametrize("case", list(CASES))
def test_generated_ids_and_scores_match_float32_oracle(lm, oracle, case):
    messages = CASES[case]
    prompt = lm.prompt_ids(messages)
    gen = generate(lm, prompt, N_NEW, 5)  # from exactly these ids (0.18 passes input_ids through)
    ref = generate(oracle, prompt, N_NEW, 5)
    first = min(FIRST_SAME, len(ref.token_ids))
    assert gen.token_ids[:first] == ref.token_ids[:first]
    if gen.finish_reason == "stop":
        assert gen.token_ids[-1] in lm.stop_ids  # include_stop_str_in_output kept it

    ours = lm.score_ids(prompt, gen.token_ids, 5)  # lmdeploy's own logits (async_get_logits)
    exact = oracle.score_ids(prompt, gen.token_ids, 5)  # float32 rescoring of lmdeploy's ids
    diff = (ours.logprob.exp() - exact.logprob.exp()).abs()
    assert float(diff.max()) < TOL, f"max |dp| {float(diff.max()):.4f} at token {int(diff.argmax())}"
    # greedy: every chosen id is the float32 argmax, or within TOL of it (a near tie)
    gap = exact.top_logprobs[:, 0].exp() - exact.logprob.exp()
    assert bool(((exact.rank == 1) | (gap < TOL)).all())

    if lm.backend == "lmdeploy-pytorch":  # raw_logprobs: the engine's own log-softmax agrees
        assert gen.engine_logprobs is not None and len(gen.engine_logprobs) == len(gen.token_ids)
        assert compare_engine_logprobs(gen.engine_logprobs, gen.token_ids, exact, TOL) == []
    else:
        assert gen.engine_logprobs is None


def test_reported_probabilities_are_not_turbomind_zeros(lm):
    """TurboMind's greedy logprobs are 0.0 (p = 1) for every token: we report rescored ones."""
    from lmdeploy import GenerationConfig

    from greedyscore.service import Service

    messages = CASES["chinese"]
    dicts = [{"role": m.role, "content": m.content} for m in messages]
    resp = lm.pipe(dicts, gen_config=GenerationConfig(do_sample=False, max_new_tokens=16, logprobs=1))
    reply = Service(lm).chat(messages, Settings(max_new_tokens=16, top_k=1))
    assert [t.id for t in reply.tokens][: len(resp.token_ids)] == list(resp.token_ids)
    assert min(t.prob for t in reply.tokens) < 0.99  # a real reply has uncertain tokens
    if lm.backend == "lmdeploy-turbomind" and resp.logprobs:
        engine_lps = [row.get(t, 0.0) for row, t in zip(resp.logprobs, resp.token_ids, strict=False)]
        print("TurboMind greedy logprobs:", engine_lps)  # 0.0 each, per lmdeploy issues #2652, #2232
        reported = [t.logprob for t in reply.tokens[: len(engine_lps)]]
        assert reported != pytest.approx(engine_lps, abs=1e-3)


def test_cancel_aborts_the_request(lm):
    messages = [Message("user", "Write a long story about a dragon who learns to paint.")]
    cancel = threading.Event()
    seen: list[int] = []

    def on_ids(new: list[int]) -> None:
        seen.extend(new)
        if len(seen) >= 2:
            cancel.set()

    gen = generate(lm, lm.prompt_ids(messages), 256, 1, on_ids=on_ids, cancel=cancel)
    assert gen.finish_reason == "abort" and 2 <= len(gen.token_ids) < 256
    after = generate(lm, lm.prompt_ids(CASES["english"]), 4, 1)
    assert len(after.token_ids) >= 1  # the pipeline still serves requests


def test_score_source_says_half_precision_logits(lm):
    """LMDeploy runs the model in fp16/bf16: the UI must not claim float32 logits."""
    assert lm.score_source.split()[0] in ("float16", "bfloat16"), lm.score_source
    assert lm.score_source.endswith("softmax in float32")
