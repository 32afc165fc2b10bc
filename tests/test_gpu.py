"""GPU checks: LMDeploy 0.18's PyTorch engine (and TurboMind where its binary loads) against an
independent float64 transformers forward over the same model dir.

Run once on a lent GPU machine by `make gpu-check` (or `make test-gpu`); the model is
$GREEDYSCORE_GPU_MODEL (a .gguf or HF dir, converted by `resolve_model`), else the embedded one.
Skipped without CUDA or without lmdeploy. The checks run in file order (the issue's order), each
recording what it saw with print() (`-s`/`-rs` logs) and, when $OUT is set, as JSON lines in
$OUT/gpu-facts.jsonl, before it asserts anything, so a failing check still leaves its numbers.

The oracle is brute force, written here: `AutoModelForCausalLM(dtype=float64)` over prompt + reply,
log_softmax per row, row len(prompt)-1+i for generated token i (no greedyscore scoring code, and not
TransformersEngine's generation, which does not run on the device's transformers).

Rehearsal without a GPU: GREEDYSCORE_GPU_REHEARSAL=1 builds the engine over
tests/lmdeploy_standin.StandinPipeline (lmdeploy's own Pipeline code, a bfloat16 transformers model
in place of the GPU engine) and runs the oracle in float64 on the CPU; the same checks run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from cases import CONVERSATIONS, generate

from greedyscore.engines.lmdeploy import LMDeployEngine
from greedyscore.errors import EngineUnavailable
from greedyscore.models import resolve_model
from greedyscore.scoring import ENGINE_LOGPROB_TOLERANCE, StepScores, compare_engine_logprobs
from greedyscore.types import Message

REHEARSAL = os.environ.get("GREEDYSCORE_GPU_REHEARSAL") == "1"
MODEL = os.environ.get("GREEDYSCORE_GPU_MODEL") or None
DEVICE = "cpu" if REHEARSAL else "cuda"


def _skip_reason() -> str | None:
    if not REHEARSAL and not torch.cuda.is_available():
        return "needs a CUDA GPU (GREEDYSCORE_GPU_REHEARSAL=1 rehearses these checks on the CPU stand-in)"
    try:
        import lmdeploy  # noqa: F401
    except Exception as ex:  # ImportError, or a CUDA library it links against
        return f"lmdeploy does not import ({type(ex).__name__}: {ex}): run `make gpu`"
    return None


SKIP = _skip_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]

# The pipeline under test: small and quick to start (no CUDA graphs), chunked prefill at 256 tokens
SETTINGS = dict(cache_max_entry_count=0.2, max_batch_size=4, session_len=4096, eager_mode=True,
                max_prefill_token_num=256)
# |p_engine - p_float64| of a chosen token: LMDeploy runs the model in bfloat16 (the embedded model in
# bf16 against float64 on a CPU, decode step by step: up to 0.090 on the emoji case, 0.053 on code)
TOL = ENGINE_LOGPROB_TOLERANCE["bfloat16"]
# |H_engine - H_float64| (nats) may be at most ENTROPY_ABS + ENTROPY_REL * H_float64: bf16 logits
# carry a rounding error of ~2^-8 relative (0.03-0.1 on logits of 10-25) plus the forward's own bf16
# arithmetic; the entropy moves by about the p-weighted spread of those errors times the spread of
# log p, so it grows with the entropy itself. Measured on the CPU (embedded model, bf16 decode against
# float64, 7 conversations): at most 0.25 nats at H=2.5 and 0.10 at H=0.57 (|dH|/H <= 0.18). The bound
# is ~1.5x that; a renormalised or top-k-only entropy (0 for greedy) breaks it once H > 0.19.
ENTROPY_ABS, ENTROPY_REL = 0.15, 0.2
TOP_K = 5


# --- facts --------------------------------------------------------------------------------------------
def fact(check: str, **data: Any) -> None:
    """Print one check's facts and append them to $OUT/gpu-facts.jsonl (when OUT is set)."""
    line = json.dumps({"check": check, "rehearsal": REHEARSAL, **data}, default=str, ensure_ascii=False)
    print(f"GPU-FACT {line}", flush=True)
    out = os.environ.get("OUT")
    if out:
        with (Path(out) / "gpu-facts.jsonl").open("a", encoding="utf-8") as f:
            f.write(line + "\n")


# --- the model, the oracle, the engine (each loaded once) --------------------------------------------
@pytest.fixture(scope="module")
def model() -> tuple[str, str]:
    """(name, HF dir) of the model under test: the dir both LMDeploy and the oracle load."""
    return resolve_model(MODEL)


@pytest.fixture(scope="module")
def oracle(model):
    """ids -> float64 log-softmax [len(ids), vocab] (CPU) of one float64 transformers forward (float32
    weights only where float64 ones would not fit beside LMDeploy: the fact says which ran)."""
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    net = AutoModelForCausalLM.from_pretrained(model[1], dtype=torch.float64, attn_implementation="eager").eval()
    n_bytes = sum(p.numel() for p in net.parameters()) * 8
    free = torch.cuda.mem_get_info()[0] if DEVICE == "cuda" else None
    if free is not None and n_bytes > 0.7 * free:  # a big $GREEDYSCORE_GPU_MODEL beside LMDeploy: float32
        net = net.float()
    net = net.to(DEVICE)
    fact("oracle", model=model[0], device=DEVICE, dtype=str(next(net.parameters()).dtype),
         weights_gib_float64=round(n_bytes / 2**30, 2), load_s=round(time.perf_counter() - t0, 1),
         gpu_free_gib=None if free is None else round(free / 2**30, 1))
    held = {"net": net}  # dropped after the module, freeing its memory

    @torch.inference_mode()
    def logprobs(ids) -> torch.Tensor:
        logits = held["net"](input_ids=torch.tensor([[int(i) for i in ids]], device=DEVICE)).logits[0]
        return torch.log_softmax(logits.double(), dim=-1).cpu()

    yield logprobs
    held.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _standin(model: tuple[str, str], backend: str, **settings: Any) -> LMDeployEngine:
    """The rehearsal engine: lmdeploy's Pipeline over a bfloat16 transformers model on the CPU."""
    from lmdeploy import PytorchEngineConfig, TurbomindEngineConfig
    from lmdeploy_standin import StandinPipeline
    from transformers import AutoModelForCausalLM

    half = AutoModelForCausalLM.from_pretrained(model[1], dtype=torch.bfloat16).eval()
    common = dict(enable_prefix_caching=False, enable_metrics=False)
    if backend == "pytorch":
        config: Any = PytorchEngineConfig(logprobs_mode="raw_logprobs", **common, **settings)
    else:
        config = TurbomindEngineConfig(**common, **{k: v for k, v in settings.items()
                                                    if k not in ("eager_mode", "max_prefill_token_num")})
    return LMDeployEngine(StandinPipeline(model[1], half, backend=backend, backend_config=config), model[0], backend)


def _load(model: tuple[str, str], engine: str, **settings: Any) -> tuple[LMDeployEngine, float]:
    t0 = time.perf_counter()
    if REHEARSAL:
        lm = _standin(model, engine, **settings)
    else:
        try:
            lm = LMDeployEngine.load(MODEL, engine=engine, **settings)
        except EngineUnavailable as ex:
            pytest.fail(f"lmdeploy {engine} did not start: {ex}")
    return lm, time.perf_counter() - t0


@pytest.fixture(scope="module")
def lm(model):
    engine, load_s = _load(model, "pytorch", **SETTINGS)
    engine.load_s = load_s  # for check 2
    yield engine
    engine.close()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- comparisons with the oracle ------------------------------------------------------------------------
def oracle_steps(rows: torch.Tensor, chosen, k: int) -> StepScores:
    """Brute-force float64 scores of `chosen` from oracle log-softmax rows [n, vocab]."""
    chosen = torch.tensor([int(t) for t in chosen]).view(-1, 1)
    lp = rows.gather(1, chosen)
    top_lp, top_ids = rows.topk(max(k, 2), dim=-1)
    return StepScores(logprob=lp.squeeze(1), rank=(rows > lp).sum(-1) + 1,
                      entropy=-(rows.exp() * rows).nan_to_num(0.0).sum(-1),
                      margin=top_lp[:, 0].exp() - top_lp[:, 1].exp(), top_ids=top_ids[:, :k],
                      top_logprobs=top_lp[:, :k])


def reply_rows(oracle, prompt, reply) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle rows of the reply's tokens, and the same read one row early (an off-by-one reading)."""
    lp = oracle([*prompt, *reply])
    start, n = len(prompt) - 1, len(reply)
    return lp[start : start + n], lp[start - 1 : start - 1 + n]


def compare(steps: StepScores, rows: torch.Tensor, shifted: torch.Tensor, chosen) -> dict[str, Any]:
    """How far `steps` (the engine's) are from the oracle's rows: the facts every check records."""
    exact = oracle_steps(rows, chosen, TOP_K)
    ids = torch.tensor([int(t) for t in chosen]).view(-1, 1)
    p_ours = steps.logprob.double().exp()
    dp = (p_ours - exact.logprob.exp()).abs()
    dp_shifted = (p_ours - shifted.gather(1, ids).squeeze(1).exp()).abs()
    dh = (steps.entropy.double() - exact.entropy).abs()
    dh_ratio = dh / (ENTROPY_ABS + ENTROPY_REL * exact.entropy)
    k = min(TOP_K, steps.top_ids.shape[1])
    listed_p = steps.top_logprobs[:, :k].double().exp()
    d_listed = (listed_p - rows.gather(1, steps.top_ids[:, :k].long()).exp()).abs()  # their p, by the oracle
    d_topk = (listed_p - exact.top_logprobs[:, :k].exp()).abs()  # nothing likelier left out
    gap = exact.top_logprobs[:, 0].exp() - exact.logprob.exp()  # greedy: argmax, or a near tie
    own_gap = steps.top_logprobs[:, 0].double().exp() - p_ours  # the same, by the engine's own scores
    return dict(n=len(dp), max_dp=round(float(dp.max()), 5), worst_token=int(dp.argmax()),
                max_dp_off_by_one=round(float(dp_shifted.max()), 5), max_dH=round(float(dh.max()), 4),
                max_dH_over_bound=round(float(dh_ratio.max()), 3), max_dp_top=round(float(d_listed.max()), 5),
                max_dp_topk=round(float(d_topk.max()), 5), ranks=sorted(set(steps.rank.tolist())),
                max_gap=round(float(own_gap.max()), 5), oracle_max_gap=round(float(gap.max()), 5))


def assert_agrees(c: dict[str, Any], discriminating: bool = True, greedy: str | None = "argmax") -> None:
    """greedy: "argmax" (scores from the very logits that chose each token: rank 1), "near" (from
    another pass, e.g. a rescoring prefill: rank 1 or within TOL of it), None (teacher-forced text)."""
    assert c["max_dp"] < TOL, f"|dp| {c['max_dp']} >= {TOL} at token {c['worst_token']}"
    assert c["max_dH_over_bound"] <= 1.0, f"entropy off by {c['max_dH']} nats, over the bound"
    assert c["max_dp_top"] < TOL and c["max_dp_topk"] < TOL, "the top ids' probabilities differ from the oracle's"
    if discriminating:  # an off-by-one reading of the rows would have failed this check
        assert c["max_dp_off_by_one"] > 2 * TOL, f"rows read one early differ by only {c['max_dp_off_by_one']}"
    if greedy == "argmax":
        assert c["ranks"] == [1], "a greedy token is not the argmax of the logits it was scored from"
    if greedy == "near":
        assert c["max_gap"] < TOL, "a greedy token is far from the argmax of its rescoring"
    if greedy:
        assert c["oracle_max_gap"] < TOL, "a chosen token is neither the float64 argmax nor a near tie"


def engine_rows_facts(gen, rows: torch.Tensor) -> dict[str, Any]:
    """The PyTorch engine's own raw_logprobs rows (chosen id + top-K) against the oracle."""
    rows_lp = gen.engine_logprobs or ()
    missing = [i for i, (row, t) in enumerate(zip(rows_lp, gen.token_ids)) if int(t) not in row]
    worst = 0.0
    for i, row in enumerate(rows_lp[: len(rows)]):
        for tok, value in row.items():
            worst = max(worst, abs(math.exp(value) - float(rows[i, int(tok)].exp())))
    return dict(n_rows=len(rows_lp), n_ids=len(gen.token_ids), rows_without_chosen=missing,
                max_dp_any_listed=round(worst, 5))


# --- the pipeline's own state (read on its loop) ---------------------------------------------------------
def pipeline_state(lm: LMDeployEngine) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        mgr = lm.pipe.async_engine.session_mgr
        return dict(sessions=len(mgr.sessions), handles_out=mgr.request_handle_pool.num_dispatched,
                    waiting=sum(s._handle is None for s in mgr.sessions.values()))

    state = asyncio.run_coroutine_threadsafe(read(), lm.pipe.internal_thread.loop).result(timeout=30)
    backend = getattr(lm.pipe, "backend", None)
    if REHEARSAL and hasattr(backend, "running"):  # the stand-in also knows which requests still run
        state["standin_running"] = len(backend.running)
    return state


def assert_nothing_left(lm: LMDeployEngine, check: str) -> None:
    """No session and no request handle left behind (what test_lmdeploy_engine checks), allowing
    lmdeploy a moment to run its clean-up; then the pipeline still serves a request."""
    deadline = time.monotonic() + 10
    while True:
        state = pipeline_state(lm)
        if not any(state.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    after = generate(lm, lm.tokenizer.prompt_ids(CONVERSATIONS["english"]), 4, 1)
    fact(check + "/after", **state, then_served=len(after.token_ids), then_finish=after.finish_reason)
    assert state["sessions"] == 0 and state["handles_out"] == 0, f"left behind: {state}"
    assert state.get("standin_running", 0) == 0
    assert after.token_ids and after.finish_reason in ("stop", "length")  # the pipeline still serves


def single_pass_facts(gen) -> dict[str, Any]:
    return dict(n_ids=len(gen.token_ids), finish=gen.finish_reason, steps=None if gen.steps is None else len(gen.steps),
                notes=list(gen.notes))


def assert_single_pass(gen) -> None:
    assert gen.steps is not None, f"no single-pass scores (notes: {list(gen.notes)})"
    assert len(gen.steps) == len(gen.token_ids)
    assert gen.notes == (), f"single pass fell back: {list(gen.notes)}"


# --- 1. lmdeploy and TurboMind ------------------------------------------------------------------------------
def test_1_lmdeploy_version_and_whether_turbomind_loads():
    import lmdeploy
    from lmdeploy import turbomind

    available = turbomind.is_available()
    error = getattr(turbomind, "_import_error", None)
    fact("1 lmdeploy", version=lmdeploy.__version__, turbomind_available=available,
         turbomind_import_error=None if error is None else f"{type(error).__name__}: {error}",
         torch=torch.__version__, cuda=torch.version.cuda,
         gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    assert lmdeploy.__version__ == "0.18.0"


# --- 2. the PyTorch-engine pipeline ----------------------------------------------------------------------------
def test_2_pytorch_engine_pipeline_loads_with_raw_logprobs(lm):
    config = lm.pipe.backend_config
    fact("2 pipeline", backend=lm.info.backend, logprobs_mode=getattr(config, "logprobs_mode", None),
         load_s=round(lm.load_s, 1), max_batch_size=config.max_batch_size, session_len=config.session_len,
         eager_mode=getattr(config, "eager_mode", None), cache_max_entry_count=config.cache_max_entry_count,
         max_prefill_token_num=getattr(config, "max_prefill_token_num", None), context_length=lm.info.context_length,
         vocab_size=lm.info.vocab_size, stop_ids=sorted(lm.info.stop_ids), score_source=lm.info.score_source,
         logprob_tolerance=lm.info.logprob_tolerance)
    assert lm.info.backend == "lmdeploy-pytorch"
    assert config.logprobs_mode == "raw_logprobs"
    assert (config.max_batch_size, config.session_len, config.eager_mode, config.max_prefill_token_num) == \
        (4, 4096, True, 256)
    assert lm.info.score_source.split()[0] in ("bfloat16", "float16"), lm.info.score_source
    assert lm.info.logprob_tolerance == ENGINE_LOGPROB_TOLERANCE[lm.info.score_source.split()[0]]


# --- 3. async_get_logits: the rescoring rows --------------------------------------------------------------------
def test_3_async_get_logits_rows_agree_with_float64(lm, oracle):
    prompt = lm.tokenizer.prompt_ids(CONVERSATIONS["multi-turn"])
    # the model's own greedy reply as the scored text: it predicts it (a text it does not predict, on
    # the kit's cut-down model, reads nearly the same one row early: the check could not fail)
    ids = prompt + list(generate(lm, prompt, 24, TOP_K).token_ids)
    loop = lm.pipe.internal_thread.loop
    t0 = time.perf_counter()
    logits = asyncio.run_coroutine_threadsafe(lm.pipe.async_engine.async_get_logits([ids]), loop).result(300)[0]
    seconds = time.perf_counter() - t0
    exact = oracle(ids)
    facts: dict[str, Any] = dict(shape=list(logits.shape), dtype=str(logits.dtype), device=str(logits.device),
                                 oracle_shape=list(exact.shape), seconds=round(seconds, 3))
    if logits.shape == exact.shape:
        lp = torch.log_softmax(logits.double(), dim=-1)  # row r predicts ids[r + 1]
        steps = oracle_steps(lp[:-1], ids[1:], TOP_K)  # the engine's rows, scored the same brute-force way
        facts.update(compare(steps, exact[:-1], torch.cat([exact[:1], exact[:-2]]), ids[1:]))
    # and the same rows through score_ids (the engine's rescoring of a reply)
    n_prompt = len(prompt)
    rescored = lm.score_ids(prompt, ids[n_prompt:], TOP_K)
    rows, shifted = exact[n_prompt - 1 : -1], exact[n_prompt - 2 : -2]
    facts["score_ids"] = compare(rescored, rows, shifted, ids[n_prompt:])
    fact("3 async_get_logits", n_ids=len(ids), **facts)
    assert list(logits.shape) == [len(ids), exact.shape[1]]
    assert logits.dtype in (torch.bfloat16, torch.float16)
    assert_agrees(facts, greedy=None)  # teacher-forced text: its tokens need not be the argmax
    assert_agrees(facts["score_ids"], greedy=None)


# --- 4. a short reply stops on a stop id ------------------------------------------------------------------------
def test_4_short_reply_ends_with_a_stop_id(lm, oracle):
    """finish 'stop', its stop id kept and scored. The kit's cut-down model may never emit its
    end-of-turn id: then the id it emits 4th is made a stop word of the pipeline, the way a chat
    template's stop words reach the engine (AsyncEngine._determine_gen_config), and the reply rerun."""
    prompt = lm.tokenizer.prompt_ids(CONVERSATIONS["english"])
    gen = generate(lm, prompt, 128, TOP_K)
    engine, saved = lm.pipe.async_engine, (lm.pipe.async_engine.stop_words, lm.info)
    forced = None
    if gen.finish_reason != "stop" and len(gen.token_ids) > 3:
        forced = int(gen.token_ids[3])
        first = list(gen.token_ids).index(forced)
        engine.stop_words, lm.info = [forced], dataclasses.replace(lm.info, stop_ids=frozenset({forced}))
        try:
            gen = generate(lm, prompt, 128, TOP_K)
        finally:
            engine.stop_words, lm.info = saved
    facts: dict[str, Any] = dict(n_ids=len(gen.token_ids), finish=gen.finish_reason, forced_stop=forced,
                                 last_id=gen.token_ids[-1] if gen.token_ids else None,
                                 text=lm.tokenizer.decode(gen.token_ids))
    if gen.steps is not None and len(gen.steps) == len(gen.token_ids):
        rows, shifted = reply_rows(oracle, prompt, gen.token_ids)
        facts["steps"] = compare(gen.steps, rows, shifted, gen.token_ids)
    fact("4 stop", **facts)
    assert gen.finish_reason == "stop"
    assert gen.token_ids[-1] == forced if forced is not None else gen.token_ids[-1] in lm.info.stop_ids
    if forced is not None:
        assert len(gen.token_ids) == first + 1  # it stopped at the stop id's first appearance
    assert_single_pass(gen)  # the stop id's own row scored in the same pass
    assert_agrees(facts["steps"], discriminating=False)


# --- 5. the engine's raw logprobs and the single-pass scores ------------------------------------------------------
def test_5_engine_logprobs_and_single_pass_steps_agree_with_float64(lm, oracle):
    prompt = lm.tokenizer.prompt_ids(CONVERSATIONS["code"])
    gen = generate(lm, prompt, 48, TOP_K)
    rows, shifted = reply_rows(oracle, prompt, gen.token_ids)
    facts: dict[str, Any] = single_pass_facts(gen)
    facts["engine_rows"] = engine_rows_facts(gen, rows)
    exact = oracle_steps(rows, gen.token_ids, TOP_K)
    if gen.engine_logprobs is not None and len(gen.engine_logprobs) == len(gen.token_ids):
        facts["compare_engine_logprobs"] = compare_engine_logprobs(gen.engine_logprobs, gen.token_ids, exact, TOL)
    if gen.steps is not None and len(gen.steps) == len(gen.token_ids):
        facts["steps"] = compare(gen.steps, rows, shifted, gen.token_ids)
        if gen.engine_logprobs:  # the logits processor and raw_logprobs: the same decode logits?
            own = torch.tensor([row.get(int(t), float("nan")) for row, t in zip(gen.engine_logprobs, gen.token_ids)])
            facts["max_dp_steps_vs_engine_rows"] = round(float((own.exp() - gen.steps.logprob.exp()).abs().max()), 5)
    fact("5 single pass", **facts)
    assert gen.engine_logprobs is not None and len(gen.engine_logprobs) == len(gen.token_ids)
    assert facts["engine_rows"]["rows_without_chosen"] == []
    assert facts["engine_rows"]["max_dp_any_listed"] < TOL
    assert facts["compare_engine_logprobs"] == []
    assert_single_pass(gen)
    assert_agrees(facts["steps"])


# --- 6. Stop: mid-decode, at once, while waiting for a request handle ---------------------------------------------
STORY = "Write a long story about a dragon who learns to paint."


def test_6a_stop_mid_decode(lm):
    cancel = threading.Event()
    seen: list[int] = []

    def on_ids(new: list[int]) -> None:
        seen.extend(new)
        if len(seen) >= 2:
            cancel.set()

    gen = generate(lm, lm.tokenizer.prompt_ids([Message("user", STORY)]), 256, 1, on_ids=on_ids, cancel=cancel)
    fact("6a stop mid-decode", n_ids=len(gen.token_ids), streamed=len(seen), finish=gen.finish_reason)
    assert gen.finish_reason == "abort" and 2 <= len(gen.token_ids) < 256
    assert_nothing_left(lm, "6a stop mid-decode")


def test_6b_stop_at_once(lm):
    cancel = threading.Event()
    cancel.set()
    gen = generate(lm, lm.tokenizer.prompt_ids([Message("user", STORY)]), 256, 1, cancel=cancel)
    fact("6b stop at once", n_ids=len(gen.token_ids), finish=gen.finish_reason)
    assert gen.finish_reason == "abort" and gen.token_ids == ()
    assert_nothing_left(lm, "6b stop at once")


def test_6c_stop_while_waiting_for_a_request_handle(lm):
    """All max_batch_size handles held by long replies; a further request, queued for a handle, is
    stopped (lmdeploy's Session.async_abort does nothing before the request has a handle): it must
    end as "abort" without decoding its reply once a handle frees, leaving nothing behind."""
    n = lm.pipe.backend_config.max_batch_size
    topics = ["a dragon who learns to paint", "a lighthouse keeper's last winter", "a robot that grows roses",
              "two rival bakers in Lyon", "a whale that sings in Latin", "a map that redraws itself"]
    cancels = [threading.Event() for _ in range(n)]
    started = [threading.Event() for _ in range(n)]
    stop = threading.Event()
    facts: dict[str, Any] = dict(max_batch_size=n)
    with ThreadPoolExecutor(n + 1) as pool:
        prompts = [lm.tokenizer.prompt_ids([Message("user", f"Write a long story about {topics[i % 6]}.")])
                   for i in range(n)]
        long = [pool.submit(generate, lm, prompts[i], 1024, 1, on_ids=lambda ids, e=started[i]: e.set(),
                            cancel=cancels[i]) for i in range(n)]
        try:
            facts["all_started"] = all(e.wait(120) for e in started)
            facts["full"] = pipeline_state(lm)
            waiting = pool.submit(generate, lm, lm.tokenizer.prompt_ids(CONVERSATIONS["chinese"]), 512, 1, cancel=stop)
            deadline = time.monotonic() + 30
            while (state := pipeline_state(lm))["waiting"] < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            facts["queued"] = state
            stop.set()
            time.sleep(0.5)
            facts["ended_while_still_waiting"] = waiting.done()
        finally:
            for e in cancels:  # free the handles: the queued request gets one and must end at once
                e.set()
        stopped = waiting.result(timeout=120)
        ran = [f.result(timeout=120) for f in long]
    facts.update(stopped_ids=len(stopped.token_ids), stopped_finish=stopped.finish_reason,
                 long=[(g.finish_reason, len(g.token_ids)) for g in ran])
    fact("6c stop while waiting", **facts)
    assert facts["all_started"] and facts["full"]["handles_out"] == n, "the long replies did not hold every handle"
    assert facts["queued"]["waiting"] >= 1, "the further request was never seen waiting for a handle"
    assert all(g.token_ids and g.finish_reason in ("abort", "stop", "length") for g in ran)
    assert stopped.finish_reason == "abort"
    assert len(stopped.token_ids) <= 8, f"the stopped request decoded {len(stopped.token_ids)} tokens, not ~0"
    assert_nothing_left(lm, "6c stop while waiting")


# --- 7. concurrent generate + score ----------------------------------------------------------------------------------
def test_7_eight_concurrent_generate_and_score_calls(lm, oracle):
    cases = {**CONVERSATIONS, "colours": [Message("user", "Name three colours and one fruit of each colour.")]}
    assert len(cases) == 8

    def run(messages):
        prompt = lm.tokenizer.prompt_ids(messages)
        gen = generate(lm, prompt, 24, TOP_K)
        return prompt, gen, lm.score_ids(prompt, gen.token_ids, TOP_K)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(cases)) as pool:
        results = dict(zip(cases, pool.map(run, cases.values())))
    seconds = time.perf_counter() - t0
    per_case: dict[str, Any] = {}
    for case, (prompt, gen, rescored) in results.items():
        rows, shifted = reply_rows(oracle, prompt, gen.token_ids)
        per_case[case] = dict(single_pass_facts(gen), rescored=compare(rescored, rows, shifted, gen.token_ids))
        if gen.steps is not None and len(gen.steps) == len(gen.token_ids):
            per_case[case]["steps"] = compare(gen.steps, rows, shifted, gen.token_ids)
    fact("7 concurrent", seconds=round(seconds, 2), cases=per_case)
    for case, (_, gen, _) in results.items():
        assert gen.token_ids, case
        assert_agrees(per_case[case]["rescored"], discriminating=False, greedy="near")  # a short reply: few rows
        assert_single_pass(gen)
        assert_agrees(per_case[case]["steps"], discriminating=False)


# --- 8. a prompt longer than one prefill chunk -----------------------------------------------------------------------
def test_8_long_prompt_chunked_prefill(lm, oracle):
    colours, animals = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"], \
        ["fox", "owl", "bear", "hare", "wolf", "deer", "crow", "seal", "lynx"]
    towns = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Delhi", "Quito", "Tokyo", "Accra", "Hanoi", "Perth"]
    notes = [f"Note {i}: the {colours[i % 8]} {animals[i % 9]} visited {towns[i % 11]} on day {i + 3}." for i in
             range(38)]
    text = "Read these notes.\n" + "\n".join(notes) + "\nWhich animal visited Paris on day 3?"
    prompt = lm.tokenizer.prompt_ids([Message("user", text)])
    chunk = lm.pipe.backend_config.max_prefill_token_num
    gen = generate(lm, prompt, 16, TOP_K)
    rows, shifted = reply_rows(oracle, prompt, gen.token_ids)
    facts: dict[str, Any] = dict(single_pass_facts(gen), prompt_ids=len(prompt), max_prefill_token_num=chunk,
                                 engine_rows=engine_rows_facts(gen, rows))
    if gen.steps is not None and len(gen.steps) == len(gen.token_ids):
        facts["steps"] = compare(gen.steps, rows, shifted, gen.token_ids)
    fact("8 chunked prefill", **facts)
    assert len(prompt) > 2 * chunk  # the prompt's prefill runs in several chunks
    assert facts["engine_rows"]["rows_without_chosen"] == [] and facts["engine_rows"]["max_dp_any_listed"] < TOL
    assert_single_pass(gen)
    assert_agrees(facts["steps"], discriminating=len(gen.token_ids) >= 8)


# --- 9. TurboMind --------------------------------------------------------------------------------------------------
def test_9_turbomind_single_pass_agrees_with_float64(model, oracle):
    from lmdeploy import turbomind

    if not REHEARSAL and not turbomind.is_available():
        error = getattr(turbomind, "_import_error", None)
        reason = f"TurboMind's binary does not load: {type(error).__name__}: {error}"
        fact("9 turbomind", skipped=reason)
        pytest.skip(reason)
    settings = {k: v for k, v in SETTINGS.items() if k not in ("eager_mode", "max_prefill_token_num")}
    tm, load_s = _load(model, "turbomind", **settings)
    try:
        prompt = tm.tokenizer.prompt_ids(CONVERSATIONS["code"])
        gen = generate(tm, prompt, 48, TOP_K)
        rows, shifted = reply_rows(oracle, prompt, gen.token_ids)
        facts: dict[str, Any] = dict(single_pass_facts(gen), backend=tm.info.backend, load_s=round(load_s, 1),
                                     score_source=tm.info.score_source, engine_logprobs=gen.engine_logprobs is not None)
        if gen.steps is not None and len(gen.steps) == len(gen.token_ids):
            facts["steps"] = compare(gen.steps, rows, shifted, gen.token_ids)
        facts["rescored"] = compare(tm.score_ids(prompt, gen.token_ids, TOP_K), rows, shifted, gen.token_ids)
        fact("9 turbomind", **facts)
        assert tm.info.backend == "lmdeploy-turbomind", f"fell back to {tm.info.backend}"
        assert gen.engine_logprobs is None  # TurboMind's greedy logprobs are 0.0: never requested
        assert_agrees(facts["rescored"], discriminating=len(gen.token_ids) >= 8, greedy="near")
        assert_single_pass(gen)
        assert_agrees(facts["steps"], discriminating=len(gen.token_ids) >= 8)
    finally:
        tm.close()
