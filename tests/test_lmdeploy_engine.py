"""LMDeployEngine on CPU: lmdeploy 0.18's real template, tokenizer and Pipeline/AsyncEngine code,
with only the GPU engine replaced by a transformers stand-in (tests/lmdeploy_standin.py).

Oracle: the TransformersEngine on the same embedded model (same ids, same probabilities).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import sys
import threading
import time

import pytest
import torch
from cases import CONVERSATIONS, generate
from lmdeploy import GenerationConfig
from lmdeploy.model import get_chat_template
from lmdeploy.tokenizer import Tokenizer
from lmdeploy_standin import StandinPipeline

from greedyscore.engines import load_engine
from greedyscore.engines.lmdeploy import LMDeployEngine
from greedyscore.engines.transformers import TransformersEngine
from greedyscore.errors import BadInput, Busy, EngineUnavailable, GreedyScoreError, ModelFailed
from greedyscore.models import EMBEDDED_NAME, resolve_model
from greedyscore.scoring import compare_engine_logprobs
from greedyscore.types import Message

IM_END = 2  # <|im_end|> in SmolLM2
N_NEW = 24
GENERATE_CASES = ["english", "chinese", "emoji"]


def _dicts(messages: list[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


@pytest.fixture(scope="session")
def model_dir() -> str:
    return resolve_model(None)[1]


@pytest.fixture(scope="session")
def tf() -> TransformersEngine:
    return TransformersEngine.load(None, device="cpu")


@pytest.fixture(scope="module")
def lmdeploy_text(model_dir):
    """lmdeploy's own chat template and tokenizer for the model dir (what AsyncEngine builds)."""
    return get_chat_template(model_dir), Tokenizer(model_dir)


@pytest.fixture(scope="module")
def pipes(model_dir, tf):
    """One stand-in pipeline per lmdeploy engine, sharing the transformers model."""
    made = {name: StandinPipeline(model_dir, tf.model, backend=name) for name in ("pytorch", "turbomind")}
    yield made
    for pipe in made.values():
        pipe.close()


@pytest.fixture(scope="module", params=["pytorch", "turbomind"])
def lm(request, pipes) -> LMDeployEngine:
    return LMDeployEngine(pipes[request.param], EMBEDDED_NAME, request.param)


@pytest.fixture(scope="module")
def tf_generations(tf):
    """TransformersEngine's greedy generation per case (computed once)."""
    cache = {}

    def get(case: str, n_new: int = N_NEW):
        if (case, n_new) not in cache:
            ids = tf.tokenizer.prompt_ids(CONVERSATIONS[case])
            cache[case, n_new] = generate(tf, ids, n_new, 5)
        return cache[case, n_new]

    return get


# --- (a) prompt ids: lmdeploy's template + tokenizer == transformers' apply_chat_template -------------
@pytest.mark.parametrize("case", list(CONVERSATIONS))
def test_lmdeploy_prompt_ids_equal_hf_chat_template(case, lmdeploy_text, tf, pipes):
    messages = CONVERSATIONS[case]
    template, tokenizer = lmdeploy_text
    ids = tokenizer.encode(template.messages2prompt(_dicts(messages)), add_bos=True)
    assert ids == tf.tokenizer.prompt_ids(messages)
    assert LMDeployEngine(pipes["pytorch"], EMBEDDED_NAME, "pytorch").tokenizer.prompt_ids(messages) == ids
    # and what the pipeline itself consumes (AsyncEngine.preprocess, run unchanged)
    pipe = pipes["pytorch"]
    session = pipe.session()
    coro = pipe.async_engine.preprocess(messages=_dicts(messages), session_id=session)
    request = asyncio.run_coroutine_threadsafe(coro, pipe.internal_thread.loop).result()
    pipe.session_mgr.remove(session)
    assert request.inputs["input_ids"] == ids and request.input_token_len == len(ids)


# --- lmdeploy 0.18's own stream semantics, as read in AsyncEngine.generate --------------------------
@pytest.mark.parametrize("include_stop", [False, True])
def test_stream_token_ids_are_incremental_and_stop_id_needs_include_stop(include_stop, pipes, tf_generations):
    expected = tf_generations("english").token_ids
    assert expected[-1] == IM_END
    config = GenerationConfig(do_sample=False, max_new_tokens=N_NEW, include_stop_str_in_output=include_stop)
    responses = list(pipes["pytorch"].stream_infer([_dicts(CONVERSATIONS["english"])], gen_config=config))
    ids = tuple(t for r in responses for t in r.token_ids)
    assert ids == (expected if include_stop else expected[:-1])
    assert [r.finish_reason for r in responses[:-1]] == [None] * (len(responses) - 1)
    assert responses[-1].finish_reason == "stop"
    assert responses[-1].generate_token_len == len(ids)


# --- (b) generation and scores equal the TransformersEngine's -----------------------------------------
@pytest.mark.parametrize("case", GENERATE_CASES)
def test_generate_and_score_match_transformers(case, lm, tf, tf_generations):
    messages = CONVERSATIONS[case]
    prompt = lm.tokenizer.prompt_ids(messages)
    reference = tf_generations(case)
    streamed: list[int] = []
    gen = generate(lm, prompt, N_NEW, 5, on_ids=streamed.extend)

    assert gen.token_ids == reference.token_ids
    assert tuple(streamed) == gen.token_ids
    assert gen.finish_reason == reference.finish_reason
    if gen.finish_reason == "stop":
        assert gen.token_ids[-1] == IM_END and IM_END in lm.info.stop_ids
    assert gen.notes == ()
    # single pass: scored while generating (PyTorch engine: the logits processor; TurboMind: the
    # generated rows), equal to the TransformersEngine's and to a teacher-forced rescoring
    rescored = lm.score_ids(prompt, gen.token_ids, 5)
    for steps in (gen.steps, rescored):
        assert steps is not None and len(steps) == len(gen.token_ids)
        p_ours, p_ref = steps.logprob.exp(), reference.steps.logprob.exp()
        assert torch.allclose(p_ours, p_ref, atol=1e-4, rtol=0)
        assert torch.equal(steps.rank, reference.steps.rank)
        assert torch.equal(steps.top_ids[:, :2], reference.steps.top_ids[:, :2])
        assert torch.allclose(steps.entropy, reference.steps.entropy, atol=1e-3)
        assert torch.allclose(steps.margin, reference.steps.margin, atol=1e-4)
    steps = gen.steps

    if lm.info.backend == "lmdeploy-pytorch":  # raw_logprobs: the engine's own numbers agree
        assert gen.engine_logprobs is not None and len(gen.engine_logprobs) == len(gen.token_ids)
        assert compare_engine_logprobs(gen.engine_logprobs, gen.token_ids, steps, 1e-4) == []
    else:  # TurboMind's greedy logprobs are 0.0: never requested, never reported
        assert gen.engine_logprobs is None


def test_english_stops_with_im_end(lm):
    messages = CONVERSATIONS["english"]
    gen = generate(lm, lm.tokenizer.prompt_ids(messages), N_NEW, 5)
    assert gen.finish_reason == "stop" and gen.token_ids[-1] == IM_END
    assert lm.tokenizer.decode(gen.token_ids[-1:]) == "<|im_end|>" and lm.tokenizer.is_special(IM_END)


def test_length_limit_has_no_stop_token(lm, tf_generations):
    messages = CONVERSATIONS["chinese"]
    gen = generate(lm, lm.tokenizer.prompt_ids(messages), 3, 5)
    assert gen.finish_reason == "length"
    assert gen.token_ids == tf_generations("chinese", 3).token_ids and IM_END not in gen.token_ids


def test_score_ids_short_context_matches_transformers(lm, tf):
    """score_messages scores a whole conversation after its first token."""
    ids = lm.tokenizer.prompt_ids(CONVERSATIONS["multi-turn"])
    ours = lm.score_ids(ids[:1], ids[1:], 3)
    ref = tf.score_ids(ids[:1], ids[1:], 3)
    assert torch.allclose(ours.logprob.exp(), ref.logprob.exp(), atol=1e-4, rtol=0)
    assert len(lm.score_ids(ids, [], 3)) == 0
    with pytest.raises(ValueError):
        lm.score_ids([], ids, 3)


def test_tokenizer_helpers_match_transformers(lm, tf):
    text = "Hi 你好 🍎 <b>\n"
    assert lm.tokenizer.text_ids(text) == tf.tokenizer.text_ids(text)
    _, ids = tf.tokenizer.text_ids(text)
    assert lm.tokenizer.decode(ids) == tf.tokenizer.decode(ids) == text
    for token_id in [*ids, IM_END, 1]:
        assert lm.tokenizer.display(token_id) == tf.tokenizer.display(token_id)
        assert lm.tokenizer.is_special(token_id) == tf.tokenizer.is_special(token_id)
    assert any(lm.tokenizer.display(t).startswith("\\x") for t in ids)  # a byte token of 你 or 🍎
    assert lm.info.stop_ids == tf.info.stop_ids == frozenset({IM_END})
    assert lm.info.context_length == 8192
    assert lm.info.name == EMBEDDED_NAME


def test_cancel_stops_and_aborts_the_session(pipes, tf_generations):
    lm = LMDeployEngine(pipes["pytorch"], EMBEDDED_NAME, "pytorch")
    messages = CONVERSATIONS["chinese"]
    cancel = threading.Event()
    seen: list[int] = []

    def on_ids(new: list[int]) -> None:
        seen.extend(new)
        if len(seen) >= 3:
            cancel.set()

    backend = pipes["pytorch"].backend
    before = len(backend.cancels)
    gen = generate(lm, lm.tokenizer.prompt_ids(messages), N_NEW, 5, on_ids=on_ids, cancel=cancel)
    assert gen.finish_reason == "abort"
    assert gen.token_ids == tf_generations("chinese").token_ids[:3]
    assert len(backend.cancels) > before  # Session.abort reached the running request (async_cancel)
    assert not backend.running and not backend.cancelled
    # the pipeline is still usable afterwards
    again = generate(lm, lm.tokenizer.prompt_ids(messages), 3, 5)
    assert again.token_ids == tf_generations("chinese").token_ids[:3]
    assert generate(lm, [1], 3, 5, cancel=cancel).finish_reason == "abort"


def test_concurrent_requests_from_many_threads(pipes, tf_generations):
    """The service calls a concurrent engine from each request's thread: sessions must not mix."""
    from concurrent.futures import ThreadPoolExecutor

    lm = LMDeployEngine(pipes["pytorch"], EMBEDDED_NAME, "pytorch")
    cases = ["english", "chinese", "emoji", "english"]

    def run(case: str) -> tuple[list[int], list[float]]:
        messages = CONVERSATIONS[case]
        prompt = lm.tokenizer.prompt_ids(messages)
        gen = generate(lm, prompt, 8, 3)
        return gen.token_ids, lm.score_ids(prompt, gen.token_ids, 3).logprob.tolist()

    with ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(run, cases))
    for case, (ids, logprobs) in zip(cases, results, strict=True):
        reference = tf_generations(case, 8)
        assert ids == reference.token_ids
        assert logprobs == pytest.approx(reference.steps.logprob.tolist(), abs=1e-4)


def test_service_chat_over_lmdeploy_matches_transformers(lm, tf):
    from greedyscore.service import Service
    from greedyscore.types import Settings

    settings = Settings(max_new_tokens=16, top_k=3, verify=True)
    messages = CONVERSATIONS["english"]
    ours, ref = Service(lm).chat(messages, settings), Service(tf).chat(messages, settings)
    assert [t.id for t in ours.tokens] == [t.id for t in ref.tokens]
    assert all(abs(a.prob - b.prob) < 1e-4 for a, b in zip(ours.tokens, ref.tokens, strict=True))
    assert ours.text == ref.text and ours.backend == lm.info.backend
    assert ours.notes == ()


# --- (c) the ids the engine consumes ---------------------------------------------------------------
def test_engine_generates_from_exactly_the_ids_given(pipes, tf):
    """Generation runs on token ids: the engine consumes ours, whatever their source (here a plain
    text with no chat template), and greedy continues them exactly as transformers does. This is
    the alignment guard: 0.18's preprocess passes input_ids through and sets input_token_len from
    them, so a length check in the engine could never fail; this fails if lmdeploy's code ever
    hands the engine other ids."""
    lm = LMDeployEngine(pipes["pytorch"], EMBEDDED_NAME, "pytorch")
    context, target = lm.tokenizer.text_ids("Once upon a time, in a small village,")
    prompt = context + target
    gen = generate(lm, prompt, 8, 3)
    assert pipes["pytorch"].backend.requests[-1]["input_ids"] == prompt
    assert gen.token_ids == generate(tf, prompt, 8, 3).token_ids


def test_engine_error_response_raises(model_dir, tf):
    """A prompt longer than session_len comes back as finish_reason 'error' with a message."""
    from lmdeploy import PytorchEngineConfig

    config = PytorchEngineConfig(session_len=16, logprobs_mode="raw_logprobs", enable_metrics=False)
    pipe = StandinPipeline(model_dir, tf.model, backend="pytorch", backend_config=config)
    try:
        lm = LMDeployEngine(pipe, EMBEDDED_NAME, "pytorch")
        assert lm.info.context_length == 16
        messages = CONVERSATIONS["english"]
        with pytest.raises(GreedyScoreError, match="context length"):
            generate(lm, lm.tokenizer.prompt_ids(messages), 4, 5)
    finally:
        pipe.close()


# --- (d) load without CUDA / without lmdeploy -----------------------------------------------------
def test_load_without_cuda_says_use_transformers(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EngineUnavailable, match=r"CUDA GPU; on a CPU use --backend transformers"):
        LMDeployEngine.load(None, engine="pytorch")
    with pytest.raises(EngineUnavailable, match="CUDA"):
        load_engine("lmdeploy")


def test_load_without_lmdeploy_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lmdeploy", None)  # import lmdeploy -> ImportError
    with pytest.raises(EngineUnavailable) as info:
        LMDeployEngine.load(None)
    message = str(info.value)
    assert "make gpu" in message and "pip install -r requirements-gpu.txt" in message
    assert "\n" not in message


# --- (e) what the UI says the scores come from ------------------------------------------------------
def test_score_source_names_the_logits_dtype_the_engine_returns(model_dir, tf, pipes):
    lm = LMDeployEngine(pipes["turbomind"], EMBEDDED_NAME, "turbomind")
    assert lm.info.score_source.startswith("float32 logits") and "turbomind" in lm.info.score_source
    half = copy.deepcopy(tf.model).to(torch.bfloat16)  # as LMDeploy runs a model on a GPU
    pipe = StandinPipeline(model_dir, half, backend="pytorch")
    try:
        lm = LMDeployEngine(pipe, EMBEDDED_NAME, "pytorch")
        assert lm.info.score_source == "bfloat16 logits from LMDeploy's pytorch engine, softmax in float32"
        from greedyscore.service import Service
        from greedyscore.types import Settings

        reply = Service(lm).chat(CONVERSATIONS["english"], Settings(max_new_tokens=4))
        assert reply.score_source == lm.info.score_source and reply.to_json()["score_source"] == lm.info.score_source
        # its own logprobs come in bfloat16 (as the PyTorch engine computes them): no spurious notes
        assert lm.info.logprob_tolerance > 1e-3
        for case in ("english", "chinese", "emoji"):
            assert Service(lm).chat(CONVERSATIONS[case], Settings(max_new_tokens=32)).notes == ()
        # the old rule, 1e-3 whatever the dtype, flags ordinary tokens
        lm.info = dataclasses.replace(lm.info, logprob_tolerance=0.0)
        assert Service(lm).chat(CONVERSATIONS["chinese"], Settings(max_new_tokens=32)).notes
    finally:
        pipe.close()


# --- (e) Stop while waiting for a request handle, a dead or stuck loop, bounded rescoring ----------
def small_pipe(model_dir, tf, **config):
    from lmdeploy import PytorchEngineConfig

    cfg = PytorchEngineConfig(logprobs_mode="raw_logprobs", enable_prefix_caching=False, enable_metrics=False,
                              **config)
    return StandinPipeline(model_dir, tf.model, backend="pytorch", backend_config=cfg)


def test_a_stop_while_the_request_waits_for_a_handle_ends_it(model_dir, tf):
    """max_batch_size=1: one request holds the only request handle, a second waits for it and is
    stopped while waiting (Session.async_abort does nothing before a handle exists). It must end
    as "abort" without decoding, and leave no session or handle behind."""
    from concurrent.futures import ThreadPoolExecutor

    pipe = small_pipe(model_dir, tf, max_batch_size=1)
    try:
        lm = LMDeployEngine(pipe, EMBEDDED_NAME, "pytorch")
        prompt = lm.tokenizer.prompt_ids(CONVERSATIONS["english"])
        started, stop = threading.Event(), threading.Event()
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(generate, lm, prompt, 48, 3, on_ids=lambda ids: started.set())
            assert started.wait(60)
            n_before = len(pipe.backend.requests)
            waiting = pool.submit(generate, lm, prompt, 48, 3, cancel=stop)
            deadline = time.monotonic() + 30
            while not any(s._handle is None for s in pipe.session_mgr.sessions.values()):  # the second is queued
                assert time.monotonic() < deadline
                time.sleep(0.01)
            stop.set()
            stopped, ran = waiting.result(timeout=120), first.result(timeout=120)
        assert ran.finish_reason in ("length", "stop") and ran.token_ids  # the first ran its course
        assert stopped.finish_reason == "abort"
        assert len(stopped.token_ids) <= 1  # ended at its first step, not after 48
        assert len(pipe.backend.requests) <= n_before + 1
        assert pipe.session_mgr.sessions == {} and pipe.session_mgr.request_handle_pool.num_dispatched == 0
        assert not pipe.backend.running
    finally:
        pipe.close()


def test_a_dead_engine_loop_is_one_clear_error_and_a_stuck_one_times_out(model_dir, tf):
    pipe = small_pipe(model_dir, tf)
    lm = LMDeployEngine(pipe, EMBEDDED_NAME, "pytorch", timeout_s=0.5)
    prompt = lm.tokenizer.prompt_ids(CONVERSATIONS["english"])
    loop = pipe.internal_thread.loop
    loop.call_soon_threadsafe(time.sleep, 3.0)  # the loop thread busy elsewhere: nothing answers for 3 s
    t0 = time.monotonic()
    with pytest.raises(ModelFailed, match=r"lmdeploy did not finish a rescoring within 0 s: the engine may be stuck"):
        lm.score_ids(prompt[:1], prompt[1:], 3)
    assert time.monotonic() - t0 < 2.5
    lm.timeout_s = 120
    assert generate(lm, prompt, 2, 3).finish_reason == "length"  # it answers again once free
    loop.call_soon_threadsafe(loop.stop)
    pipe.internal_thread.thread.join(10)
    for call in (lambda: generate(lm, prompt, 2, 3), lambda: lm.score_ids(prompt[:1], prompt[1:], 3)):
        t0 = time.monotonic()
        with pytest.raises(EngineUnavailable, match="LMDeploy's engine loop has stopped.*restart the server"):
            call()
        assert time.monotonic() - t0 < 2.5
    pipe.internal_thread.closed = True  # its loop is gone: nothing left for lmdeploy's atexit close


def test_rescoring_is_bounded_in_count_and_memory(pipes):
    from greedyscore.engines.lmdeploy import RescoreBudget

    budget = RescoreBudget(count=1, max_bytes=10**9, wait_s=0.2)
    lm = LMDeployEngine(pipes["pytorch"], EMBEDDED_NAME, "pytorch", rescore_budget=budget)
    ids = lm.tokenizer.text_ids("The quick brown fox jumps over the lazy dog.")[1]
    with budget.hold(1000):  # another caller's rescoring in flight: the only place taken
        with pytest.raises(Busy, match="rescoring 1 replies already, the most it holds at once: try again"):
            lm.score_ids(ids[:1], ids[1:], 3)
    assert len(lm.score_ids(ids[:1], ids[1:], 3)) == len(ids) - 1 and budget.in_flight == 0
    lm.rescores = RescoreBudget(max_bytes=(len(ids) - 1) * lm.info.vocab_size * 4 - 1)  # rows: context + target[:-1]
    with pytest.raises(BadInput, match="GiB of logits, more than the .* GiB this server allows: shorten"):
        lm.score_ids(ids[:1], ids[1:], 3)
    assert lm.rescores.in_flight == 0 and lm.rescores.held == 0


@pytest.mark.parametrize("field, value, needle", [
    ("max_batch_size", 0, "max_batch_size must be a whole number from 1 to 4,096, got 0"),
    ("max_batch_size", 2.5, "max_batch_size must be a whole number"),
    ("max_batch_size", True, "max_batch_size must be a whole number"),
    ("session_len", -1, "session_len must be a whole number from 1"),
    ("cache_max_entry_count", 1.5, r"cache_max_entry_count\) must be a number in \(0, 1\], got 1.5"),
    ("cache_max_entry_count", 0, "must be a number in"),
    ("eager_mode", "yes", "eager_mode must be true or false"),
])
def test_bad_engine_settings_are_named_before_anything_loads(field, value, needle):
    with pytest.raises(BadInput, match=needle):
        LMDeployEngine.load(None, engine="pytorch", **{field: value})


def test_engine_settings_reach_lmdeploys_configs():
    from lmdeploy import PytorchEngineConfig, TurbomindEngineConfig

    from greedyscore.engines.lmdeploy import engine_settings

    extra = engine_settings("pytorch", 0.3, 8, 4096, True)
    config = PytorchEngineConfig(logprobs_mode="raw_logprobs", **extra)
    assert (config.max_batch_size, config.session_len, config.cache_max_entry_count, config.eager_mode) == \
        (8, 4096, 0.3, True)
    assert not config.enable_prefix_caching and TurbomindEngineConfig(**engine_settings("turbomind", None, 2, None,
                                                                                          False)).max_batch_size == 2
    with pytest.raises(BadInput, match="eager mode is a setting of LMDeploy's PyTorch engine"):
        engine_settings("turbomind", None, None, None, True)


def test_lmdeploy_flags_reach_load_and_on_another_backend_say_what_they_are_for():
    import argparse

    from greedyscore.engine_args import _lmdeploy_load, add_engine_args, engine_from_args

    p = argparse.ArgumentParser()
    add_engine_args(p)
    args = p.parse_args(["--backend", "transformers", "--max-batch-size", "8", "--eager"])
    with pytest.raises(BadInput, match="--max-batch-size, --eager set LMDeploy's engine: add --backend lmdeploy"):
        engine_from_args(args)
    for bad in (["--max-batch-size", "0"], ["--session-len", "2.5"], ["--kv-cache", "1.5"], ["--kv-cache", "nan"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
    args = p.parse_args(["--backend", "lmdeploy", "--max-batch-size", "8", "--session-len", "4096", "--kv-cache",
                         "0.5", "--eager", "--lmdeploy-engine", "pytorch"])
    assert _lmdeploy_load(args) == dict(engine="pytorch", eager_mode=True, cache_max_entry_count=0.5,
                                        max_batch_size=8, session_len=4096)
    assert _lmdeploy_load(p.parse_args(["--backend", "lmdeploy"]))["engine"] is None  # auto: TurboMind if it loads
    with pytest.raises(EngineUnavailable, match="lmdeploy needs a CUDA GPU"):  # the settings were fine
        engine_from_args(args)


# --- (f) single-pass scores: taken in the generating pass, placed on the reply's ids ----------------
def _brute(logits: torch.Tensor, chosen: list[int]) -> tuple[list[float], list[float]]:
    """float64 log-softmax of each row: (log p of the chosen id, entropy), written out."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    ent = -(lp.exp() * lp).sum(-1)
    return [float(lp[i, c]) for i, c in enumerate(chosen)], ent.tolist()


def test_greedy_steps_place_picks_among_extra_rows_against_brute_force():
    from greedyscore.scoring import align_greedy, greedy_steps, summarise_rows

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 50, generator=g) * 3
    argmax = logits.argmax(-1).tolist()
    top_lp, top_ids, ent = summarise_rows(logits, 4)
    for first, n in ((0, 7), (2, 4), (1, 5), (0, 6)):  # extra rows before (chunks) and after (run-ahead)
        picks = argmax[first : first + n]
        assert align_greedy(top_lp, top_ids, picks) == first
        steps = greedy_steps(top_lp, top_ids, ent, picks, 3)
        lp, h = _brute(logits[first : first + n], picks)
        assert steps.logprob.tolist() == pytest.approx(lp, abs=1e-5)
        assert steps.entropy.tolist() == pytest.approx(h, abs=1e-4)
        assert steps.rank.tolist() == [1] * n and steps.top_ids[:, 0].tolist() == picks
        p = torch.softmax(logits[first : first + n].double(), -1).topk(2).values
        assert steps.margin.tolist() == pytest.approx((p[:, 0] - p[:, 1]).tolist(), abs=1e-5)
    assert greedy_steps(top_lp, top_ids, ent, [argmax[0], (argmax[1] + 1) % 50], 3) is None  # not greedy
    assert align_greedy(top_lp, top_ids, argmax + [argmax[0]]) is None  # more picks than rows
    same = torch.zeros(4, 50)
    same[:, 7] = 5.0  # every row alike: a reply of one repeated id fits at several offsets
    assert align_greedy(*summarise_rows(same, 2)[:2], [7, 7]) is None
    assert align_greedy(*summarise_rows(same, 2)[:2], [7, 7], prefer=1) == 1  # the chunk rows expected settle it
    assert align_greedy(top_lp, top_ids, argmax[2:6], prefer=0) == 2  # a preferred offset that does not fit
    tie = torch.zeros(1, 50)
    tie[0, [3, 9]] = 4.0  # a tie: the engine's argmax may take either id
    tl, ti, te = summarise_rows(tie, 2)
    assert greedy_steps(tl, ti, te, [9], 2).logprob.tolist() == pytest.approx(_brute(tie, [9])[0], abs=1e-6)


def test_a_reply_is_scored_in_the_generating_pass_without_a_second_prefill(lm, tf, monkeypatch):
    """The service takes the engine's single-pass scores: no [prompt + reply, vocab] rescoring runs
    for a reply (async_get_logits would make one), and the numbers equal the transformers engine's."""
    from greedyscore.service import Service
    from greedyscore.types import Settings

    def no_rescoring(*args, **kwargs):
        raise AssertionError("a reply was rescored")

    settings = Settings(max_new_tokens=16, top_k=3)
    ref = Service(tf).chat(CONVERSATIONS["chinese"], settings)
    monkeypatch.setattr(lm.pipe.async_engine, "async_get_logits", no_rescoring)
    ours = Service(lm).chat(CONVERSATIONS["chinese"], settings)
    assert [t.id for t in ours.tokens] == [t.id for t in ref.tokens] and ours.notes == ()
    assert [t.prob for t in ours.tokens] == pytest.approx([t.prob for t in ref.tokens], abs=1e-4)
    assert [t.entropy for t in ours.tokens] == pytest.approx([t.entropy for t in ref.tokens], abs=1e-3)
    assert [[a.id for a in t.top] for t in ours.tokens] == [[a.id for a in t.top] for t in ref.tokens]


def test_a_chunked_prefill_shows_the_recorder_extra_rows_and_the_scores_stay_exact(model_dir, tf, tf_generations,
                                                                                  monkeypatch):
    """max_prefill_token_num=8: the engine's sampler also sees the last row of each prompt chunk
    before the last (its pick dropped), so the recorder holds more rows than the reply has ids;
    the picks are placed on the right ones."""
    import greedyscore.engines.lmdeploy_steps as module

    seen: list[tuple[int, int]] = []
    real = module.greedy_steps

    def spy(top_lp, top_ids, entropy, chosen, top_k, prefer=None):
        seen.append((int(top_ids.shape[0]), len(chosen), prefer))
        return real(top_lp, top_ids, entropy, chosen, top_k, prefer)

    monkeypatch.setattr(module, "greedy_steps", spy)
    monkeypatch.setattr(module.StepRecorder, "CHUNK", 4)  # rows summarised 4 at a time: several flushes
    pipe = small_pipe(model_dir, tf, max_prefill_token_num=8)
    try:
        lm = LMDeployEngine(pipe, EMBEDDED_NAME, "pytorch")
        prompt = lm.tokenizer.prompt_ids(CONVERSATIONS["chinese"])
        assert len(prompt) > 3 * 8
        gen = generate(lm, prompt, 12, 5)
        reference = tf_generations("chinese", 12)
        assert gen.token_ids == reference.token_ids and gen.notes == ()
        rows, picks, prefer = seen[-1]
        assert prefer == (len(prompt) - 1) // 8  # one extra row per chunk before the last, expected
        assert rows >= picks + prefer
        assert torch.allclose(gen.steps.logprob.exp(), reference.steps.logprob.exp(), atol=1e-4, rtol=0)
        assert torch.allclose(gen.steps.entropy, reference.steps.entropy, atol=1e-3)
    finally:
        pipe.close()


def test_concurrent_replies_sampled_in_one_batch_each_get_their_own_scores(pipes, tf_generations):
    """The stand-in samples every running sequence's row in one [batch, vocab] step, each row
    through its own request's recorder, as the PyTorch engine does."""
    from concurrent.futures import ThreadPoolExecutor

    backend = pipes["pytorch"].backend
    lm = LMDeployEngine(pipes["pytorch"], EMBEDDED_NAME, "pytorch")
    cases = ["english", "chinese", "emoji", "multi-turn"]
    start = len(backend.batch_sizes)
    with ThreadPoolExecutor(len(cases)) as pool:
        gens = list(pool.map(lambda c: generate(lm, lm.tokenizer.prompt_ids(CONVERSATIONS[c]), 10, 3), cases))
    assert max(backend.batch_sizes[start:]) > 1  # rows of several requests sampled together
    for case, gen in zip(cases, gens, strict=True):
        reference = tf_generations(case, 10)
        assert gen.token_ids == reference.token_ids and gen.notes == ()
        assert torch.allclose(gen.steps.logprob.exp(), reference.steps.logprob.exp(), atol=1e-4, rtol=0)
        assert torch.equal(gen.steps.top_ids, reference.steps.top_ids[:, :3])


@pytest.mark.parametrize("engine_name", ["pytorch", "turbomind"])
def test_scores_that_cannot_be_placed_are_said_and_rescored(engine_name, pipes, tf, monkeypatch):
    """A recorder that missed rows (PyTorch engine) or rows that do not match the reply (TurboMind):
    the Generation says so and carries no scores, and the service rescores exactly those ids."""
    import greedyscore.engines.lmdeploy_steps as module
    from greedyscore.service import Service
    from greedyscore.types import Settings

    lm = LMDeployEngine(pipes[engine_name], EMBEDDED_NAME, engine_name)
    if engine_name == "pytorch":
        real = module.StepRecorder.__call__

        def every_other(self, all_ids, scores):
            self.skip = not getattr(self, "skip", False)
            return scores if self.skip else real(self, all_ids, scores)

        monkeypatch.setattr(module.StepRecorder, "__call__", every_other)
    else:
        monkeypatch.setattr(module.Collected, "n_rows", lambda self: 0)  # as if the rows never came
    gen = generate(lm, lm.tokenizer.prompt_ids(CONVERSATIONS["english"]), 8, 3)
    assert gen.steps is None and "could not be placed" in gen.notes[0] and "rescored" in gen.notes[0]
    settings = Settings(max_new_tokens=8, top_k=3)
    messages = CONVERSATIONS["english"]
    ours, ref = Service(lm).chat(messages, settings), Service(tf).chat(messages, settings)
    assert [t.prob for t in ours.tokens] == pytest.approx([t.prob for t in ref.tokens], abs=1e-4)
    assert any("could not be placed" in n for n in ours.notes)


def test_an_engine_sampling_in_other_processes_is_rescored_and_says_why(pipes, tf, monkeypatch):
    """tp/dp > 1 or LMDEPLOY_EXECUTOR_BACKEND=mp|ray: lmdeploy would pickle the logits processor to
    its workers, out of reach, so none is installed; the reply is rescored, with a note saying why."""
    from greedyscore.service import Service
    from greedyscore.types import Settings

    assert LMDeployEngine(pipes["pytorch"], EMBEDDED_NAME, "pytorch").records_steps
    monkeypatch.setenv("LMDEPLOY_EXECUTOR_BACKEND", "mp")
    lm = LMDeployEngine(pipes["pytorch"], EMBEDDED_NAME, "pytorch")
    assert not lm.records_steps
    gen = generate(lm, lm.tokenizer.prompt_ids(CONVERSATIONS["english"]), 6, 3)
    assert gen.steps is None and "other processes" in gen.notes[0]
    assert pipes["pytorch"].backend.requests[-1]["gen_config"].logits_processors is None
    settings = Settings(max_new_tokens=6, top_k=3)
    messages = CONVERSATIONS["english"]
    ours, ref = Service(lm).chat(messages, settings), Service(tf).chat(messages, settings)
    assert [t.prob for t in ours.tokens] == pytest.approx([t.prob for t in ref.tokens], abs=1e-4)
