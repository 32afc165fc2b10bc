"""LMDeploy engine: greedy generation on a `lmdeploy.Pipeline` (TurboMind or PyTorch engine), CUDA only.

Generation runs on token ids: greedyscore builds the prompt ids (the pipeline's own template and
tokenizer) and hands exactly those to `AsyncEngine.preprocess(..., input_ids=ids)`, so the ids
scored are by construction the ids the engine consumed. LMDeploy's greedy path reports no usable
score (top_k=1 renormalises every logprob to 0.0), so the scores are taken in the generating pass,
on the GPU, from the raw logits the engine decodes with:
- PyTorch engine: a logits processor (`lmdeploy_steps.StepRecorder`, lmdeploy's `GenerationConfig.logits_processors`,
  which the sampler calls with each sequence's raw row before any penalty or temperature) keeps each
  row's float32 top-k and entropy on the GPU; after the reply they are placed on its ids
  (`scoring.greedy_steps`) and only those numbers are copied. With `logprobs_mode='raw_logprobs'`
  the engine's own log-softmax comes back too and `scoring.compare_engine_logprobs` cross-checks it.
- TurboMind: `output_logits='generation'` returns the rows of the generated tokens with the reply;
  they are scored on the GPU (`scoring.score_logits`) and only the numbers are copied.
No [prompt + reply, vocab] tensor is made for a reply. Where the rows cannot be placed on the reply
the Generation says so and carries no scores: the service then rescores exactly the generated ids
with `score_ids` (one prefill's raw logits, `AsyncEngine.async_get_logits`), as it does for text,
forks and verification.

Everything from lmdeploy is imported inside functions: importing greedyscore never needs it.
Tested on CPU against `tests/lmdeploy_standin.py` (lmdeploy's real Pipeline/AsyncEngine code over a
transformers stand-in for the GPU engine) and on a GPU by `tests/test_gpu.py` (`make gpu-check`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..errors import AlignmentError, BadInput, Busy, EngineUnavailable, GreedyScoreError, ModelFailed
from ..models import resolve_model
from ..scoring import CHUNK_ROWS, ENGINE_LOGPROB_TOLERANCE, StepScores, empty_scores, score_logits
from .base import EngineInfo, GenerateRequest, Generation
from .hf_text import LMDeployTokenizer
from .lmdeploy_steps import Collected, StepRecorder
from .threads import EngineThreads

ENGINES = ("turbomind", "pytorch")
INSTALL_HINT = "run `make gpu` (or `pip install -r requirements-gpu.txt`) on a machine with a CUDA GPU"
LOOP_TIMEOUT_S = 600.0  # the longest one call on the pipeline's event loop may take before it is called dead
POLL_S = 1.0  # how often a caller waiting on the loop checks that its thread is alive
MAX_RESCORES = 4  # rescoring calls in flight at once (each a CPU tensor of context x vocab)
MAX_RESCORE_BYTES = 4 * 2**30  # their logits, in all
RESCORE_WAIT_S = 30.0  # how long a rescoring waits for room before it says busy
LOOP_DEAD = "LMDeploy's engine loop has stopped, so no request can run: restart the server"


class RescoreBudget:
    """Rescoring runs on the callers' threads, each holding a [context, vocab] CPU tensor: at most
    `count` at once and `max_bytes` of logits in all; a call that finds no room within `wait_s`
    is Busy, and one that could never fit is refused."""

    def __init__(self, count: int = MAX_RESCORES, max_bytes: int = MAX_RESCORE_BYTES,
                 wait_s: float = RESCORE_WAIT_S) -> None:
        self.count, self.max_bytes, self.wait_s = count, max_bytes, wait_s
        self.in_flight, self.held = 0, 0
        self._room = threading.Condition()

    @contextmanager
    def hold(self, n_bytes: int) -> Iterator[None]:
        """A place for one rescoring of `n_bytes` of logits, for the `with` block."""
        if n_bytes > self.max_bytes:
            raise BadInput(f"rescoring this needs {n_bytes / 2**30:.1f} GiB of logits, more than the "
                           f"{self.max_bytes / 2**30:.1f} GiB this server allows: shorten the prompt or reply")
        with self._room:
            if not self._room.wait_for(lambda: self.in_flight < self.count and self.held + n_bytes <= self.max_bytes,
                                       timeout=self.wait_s):
                raise Busy(f"the server is rescoring {self.in_flight} replies already, the most it holds at once: "
                           "try again in a moment")
            self.in_flight += 1
            self.held += n_bytes
        try:
            yield
        finally:
            with self._room:
                self.in_flight -= 1
                self.held -= n_bytes
                self._room.notify_all()


class LMDeployEngine:
    """The Engine protocol over an lmdeploy `Pipeline` (injected, so tests can pass a stand-in)."""

    def __init__(self, pipe: Any, model_name: str, backend_name: str, timeout_s: float = LOOP_TIMEOUT_S,
                 rescore_budget: RescoreBudget | None = None, source: str | None = None) -> None:
        self.pipe = pipe
        self.timeout_s = timeout_s
        self.rescores = rescore_budget or RescoreBudget()
        self.engine_name = backend_name
        # the PyTorch engine calls a logits processor in this process only with its one-GPU 'uni'
        # executor; with tp/dp > 1 or LMDEPLOY_EXECUTOR_BACKEND=mp|ray it would be pickled to workers
        self.records_steps = backend_name == "pytorch" and _in_process(getattr(pipe, "backend_config", None))
        engine = pipe.async_engine
        self.tokenizer = LMDeployTokenizer(engine)
        hf = self.tokenizer.hf
        # raw_logprobs: the PyTorch engine's logprobs=K are a true log-softmax of the raw logits
        self.raw_logprobs = backend_name == "pytorch" and (
            getattr(getattr(pipe, "backend_config", None), "logprobs_mode", None) == "raw_logprobs"
        )
        model_vocab = int(getattr(getattr(engine, "hf_cfg", None), "vocab_size", 0) or len(hf))
        vocab_size = min(len(hf), model_vocab)
        # say what the scores are computed from: the dtype of the logits this engine really returns
        probe = self._logits([int(hf.bos_token_id or 0), *self.tokenizer.text_ids("Hi")[1]], vocab_size)
        dtype = str(probe.dtype).removeprefix("torch.")
        self.info = EngineInfo(
            name=model_name, backend=f"lmdeploy-{backend_name}",
            score_source=f"{dtype} logits from LMDeploy's {backend_name} engine, softmax in float32",
            context_length=_context_length(engine, hf), vocab_size=vocab_size, stop_ids=_stop_ids(engine),
            concurrent=True,  # LMDeploy's async engine batches concurrent requests itself
            source=source,  # the weights behind a shared result's model identity
            # the cross-check of the engine's own logprobs (computed in this dtype) allows for its rounding
            logprob_tolerance=ENGINE_LOGPROB_TOLERANCE.get(dtype, 0.0),
        )

    @classmethod
    def load(
        cls,
        model: str | None = None,
        engine: str | None = "turbomind",
        cache_max_entry_count: float | None = None,
        max_batch_size: int | None = None,
        session_len: int | None = None,
        eager_mode: bool = False,
        max_prefill_token_num: int | None = None,
        **_: Any,
    ) -> LMDeployEngine:
        """Build a pipeline with prefix caching off (async_get_logits needs all rows recomputed).

        Steps: check the settings, lmdeploy and CUDA; resolve the model dir; pick the engine
        (None: TurboMind when built, else PyTorch); `lmdeploy.pipeline(dir, backend_config=...)`.
        The PyTorch engine gets `logprobs_mode='raw_logprobs'` so its own logprobs can be
        cross-checked. `cache_max_entry_count`: the share of free GPU memory for the KV cache
        (lmdeploy: 0.8); `max_batch_size`: requests decoded together (lmdeploy's default on a big
        GPU is 1024 request handles, and CUDA graphs captured at a dozen sizes: minutes of start-up);
        `session_len`: prompt + reply tokens (default: the model's); `eager_mode` (PyTorch engine):
        no CUDA graphs, the fastest start; `max_prefill_token_num`: the most prompt tokens one
        prefill step takes (longer prompts are prefilled in chunks; lmdeploy: 8192).
        """
        extra = engine_settings(engine, cache_max_entry_count, max_batch_size, session_len, eager_mode,
                                max_prefill_token_num)
        lmdeploy = _import_lmdeploy()
        if not torch.cuda.is_available():
            raise EngineUnavailable("lmdeploy needs a CUDA GPU; on a CPU use --backend transformers")
        if engine is None:
            from lmdeploy import turbomind

            engine = "turbomind" if turbomind.is_available() else "pytorch"
        if engine not in ENGINES:
            raise EngineUnavailable(f"unknown lmdeploy engine {engine!r}: choose one of {', '.join(ENGINES)}")
        name, source = resolve_model(model)
        try:
            if engine == "pytorch":
                config: Any = lmdeploy.PytorchEngineConfig(logprobs_mode="raw_logprobs", **extra)
            else:
                config = lmdeploy.TurbomindEngineConfig(**{k: v for k, v in extra.items() if k != "eager_mode"})
        except (AssertionError, ValueError, TypeError) as ex:  # lmdeploy's own checks are bare asserts
            raise BadInput(f"lmdeploy refused the engine settings {extra}: {ex or type(ex).__name__}") from ex
        t0 = time.perf_counter()
        print(f"greedyscore: loading {name} on lmdeploy {engine} ...", file=sys.stderr, flush=True)
        try:
            pipe = lmdeploy.pipeline(source, backend_config=config, log_level="ERROR")
        except Exception as ex:  # lmdeploy raises many kinds (unsupported arch, CUDA, out of memory)
            first = f"{type(ex).__name__}: {ex}".splitlines()[0]
            raise EngineUnavailable(f"lmdeploy {engine} could not start {name}: {first}") from ex
        actual = getattr(pipe.async_engine, "backend", engine)  # TurboMind falls back to PyTorch
        if actual != engine:
            print(f"greedyscore: lmdeploy fell back from {engine} to {actual}", file=sys.stderr, flush=True)
        print(f"greedyscore: {name} loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        return cls(pipe, name, actual, source=source)

    def close(self) -> None:
        """Stop the pipeline's loop thread and free the engine."""
        self.pipe.close()

    # --- generation and scoring ----------------------------------------------------------
    def gen_config(self, max_new_tokens: int, top_k: int, recorder: StepRecorder | None = None) -> Any:
        """Greedy (do_sample=False -> top_k=1), stop token kept, the scores' source for this engine:
        the recorder on the PyTorch engine (and raw logprobs to cross-check), the generated rows'
        logits on TurboMind."""
        from lmdeploy import GenerationConfig

        return GenerationConfig(
            do_sample=False,
            max_new_tokens=max_new_tokens,
            include_stop_str_in_output=True,  # else 0.18 drops the stop id from token_ids and logprobs
            logprobs=top_k if self.raw_logprobs else None,
            logits_processors=[recorder] if recorder is not None else None,
            output_logits="generation" if self.engine_name == "turbomind" else None,
        )

    def decoder(self, max_rows: int = 16) -> EngineThreads:
        """The engine batches by itself: a row is a call in flight."""
        return EngineThreads(self.generate_batch, max_rows)

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        """Each request runs as its own request on the pipeline's event loop (LMDeploy batches
        concurrent requests itself); -> one Generation per request, in order."""
        futures = [self._submit(self._generate(r)) for r in requests]
        return [self._wait(f, "a generation") for f in futures]

    def _submit(self, coro: Any) -> concurrent.futures.Future:
        thread = self.pipe.internal_thread
        if getattr(thread, "closed", False) or not thread.thread.is_alive() or thread.loop.is_closed():
            coro.close()
            raise EngineUnavailable(LOOP_DEAD)
        return asyncio.run_coroutine_threadsafe(coro, thread.loop)

    def _wait(self, future: concurrent.futures.Future, what: str) -> Any:
        """The future's result; a loop whose thread died, or that does not answer within
        `timeout_s`, is one clear error instead of a visitor waiting forever."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return future.result(timeout=max(0.0, min(POLL_S, deadline - time.monotonic())))
            except concurrent.futures.TimeoutError:
                if not self.pipe.internal_thread.thread.is_alive():
                    future.cancel()
                    raise EngineUnavailable(LOOP_DEAD) from None
                if time.monotonic() >= deadline:
                    future.cancel()
                    raise ModelFailed(f"lmdeploy did not finish {what} within {self.timeout_s:.0f} s: the engine "
                                      "may be stuck; try again, and restart the server if it persists") from None

    async def _generate(self, req: GenerateRequest) -> Generation:
        """Greedy decoding of exactly req.prompt_ids through `AsyncEngine.preprocess(input_ids=...)`
        and `AsyncEngine.generate`, scored in the same pass.

        Steps: preprocess our ids (no template: 0.18's preprocess passes `input_ids` through
        untouched; the test that the engine instance receives exactly our ids, on lmdeploy's real
        code, is the guard); watch the cancel event (Stop -> `Session.async_abort`, repeated until
        the request ends); collect the incremental token_ids, raw logprobs and (TurboMind) logits
        of each output, passing new ids to `on_ids`; the last output carries the finish reason and,
        with include_stop_str_in_output, the stop id (and its row); then the single-pass scores.
        """
        from lmdeploy.serve.core.exceptions import RequestError

        if req.cancel is not None and req.cancel.is_set():
            return Generation((), "abort")
        engine = self.pipe.async_engine
        session = self.pipe.session()
        prompt = [int(i) for i in req.prompt_ids]
        recorder = StepRecorder(req.top_k) if self.records_steps else None
        config = self.gen_config(req.max_new_tokens, req.top_k, recorder)
        try:
            request = await engine.preprocess(None, session, config, input_ids=prompt)
        except RequestError as ex:
            raise GreedyScoreError(f"lmdeploy refused the request: {ex.message}") from ex
        cancel = req.cancel or threading.Event()
        watcher = asyncio.create_task(_abort_on(cancel, session))  # Stop while the engine is busy elsewhere
        out_ = Collected()
        try:
            async for out in engine.generate(request, stream_response=True):
                new = out_.add(out)
                if new and req.on_ids is not None:
                    req.on_ids(new)
                if out.finish_reason is None and cancel.is_set():  # Stop seen between two tokens: abort now
                    await session.async_abort()  # the engine ends it; its last output says "abort"
        except RequestError as ex:
            raise GreedyScoreError(f"lmdeploy failed: {ex.message}") from ex
        finally:
            watcher.cancel()
        if out_.reason in (None, "error"):
            raise GreedyScoreError("lmdeploy ended the request without a finish reason")
        ids = out_.token_ids
        notes: list[str] = []
        if self.raw_logprobs and len(out_.logprobs) != len(ids):
            notes.append(f"lmdeploy returned {len(out_.logprobs)} logprob rows for {len(ids)} tokens")
        steps: StepScores | None = None
        why = f"the {self.engine_name} engine's scores of this reply could not be placed on its {len(ids)} tokens"
        if recorder is not None:
            steps = await recorder.steps(ids, prefer=self._chunk_rows(len(prompt)))
        elif self.engine_name == "turbomind":
            steps = await asyncio.to_thread(out_.steps, ids, req.top_k)  # off the engine's loop
        else:
            why = ("the PyTorch engine samples in other processes here (tensor or data parallel, or "
                   "LMDEPLOY_EXECUTOR_BACKEND), out of a logits processor's reach")
        if steps is None:
            notes.append(f"{why}: rescored them in a second pass")
        return Generation(tuple(ids), out_.reason, steps=steps,
                          engine_logprobs=tuple(out_.logprobs) if self.raw_logprobs else None, notes=tuple(notes))

    def _chunk_rows(self, n_prompt: int) -> int:
        """The rows the PyTorch engine's sampler sees before a reply: one per prefill chunk
        before the last (`max_prefill_token_num` tokens each)."""
        chunk = int(getattr(self.pipe.backend_config, "max_prefill_token_num", 0) or 0)
        return max(0, -(-n_prompt // chunk) - 1) if chunk > 0 else 0

    def score_ids(
        self, context_ids: Sequence[int], target_ids: Sequence[int], top_k: int, cache: Any = None
    ) -> StepScores:
        """Teacher-forced scores from one prefill's raw logits (`async_get_logits([context + target[:-1]])` on
        the pipeline's own loop): rows len(context)-1 .. end predict the targets. `cache` is unused."""
        if not context_ids:
            raise ValueError("teacher forcing needs at least one context token")
        if not target_ids:
            return empty_scores(top_k)
        ids = [int(i) for i in context_ids] + [int(i) for i in target_ids[:-1]]
        logits = self._logits(ids, self.info.vocab_size)  # [len(ids), vocab]
        rows = logits[len(context_ids) - 1 :]  # [len(target), vocab]
        if rows.shape[0] != len(target_ids):
            raise AlignmentError(f"lmdeploy returned {logits.shape[0]} logit rows for {len(ids)} ids")
        return score_logits(rows, torch.tensor([int(t) for t in target_ids]), top_k)

    def logits(self, ids: Sequence[int], start: int, cache: Any = None) -> Iterator[torch.Tensor]:
        """Raw logits at positions start .. len(ids) - 1, from one prefill, in chunks of rows."""
        yield from self._logits([int(i) for i in ids], self.info.vocab_size)[start:].split(CHUNK_ROWS)

    def _logits(self, ids: list[int], vocab_size: int) -> torch.Tensor:
        """Raw logits [len(ids), vocab] of one prefill, CPU, in the model's dtype; within the
        rescoring budget (each call holds such a tensor on the caller's thread)."""
        with self.rescores.hold(len(ids) * vocab_size * 4):  # float32 after .float(): the larger copy
            future = self._submit(self.pipe.async_engine.async_get_logits([ids]))
            return self._wait(future, "a rescoring")[0]


def engine_settings(engine: str | None, cache_max_entry_count: float | None, max_batch_size: int | None,
                    session_len: int | None, eager_mode: bool,
                    max_prefill_token_num: int | None = None) -> dict[str, Any]:
    """The backend config's fields, each checked here with a message naming it (lmdeploy's own
    checks are bare `AssertionError`s): prefix caching and metrics off (a Prometheus logger per
    pipeline that nothing reads)."""
    extra: dict[str, Any] = dict(enable_prefix_caching=False, enable_metrics=False)
    if cache_max_entry_count is not None:
        c = cache_max_entry_count
        if isinstance(c, bool) or not isinstance(c, int | float) or not 0 < c <= 1:
            raise BadInput(f"the KV cache share (cache_max_entry_count) must be a number in (0, 1], got {c!r}")
        extra["cache_max_entry_count"] = float(c)
    for field, value, most in (("max_batch_size", max_batch_size, 4096), ("session_len", session_len, 2**24),
                               ("max_prefill_token_num", max_prefill_token_num, 2**24)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            raise BadInput(f"{field} must be a whole number from 1 to {most:,}, got {value!r}")
        extra[field] = value
    if not isinstance(eager_mode, bool):
        raise BadInput(f"eager_mode must be true or false, got {eager_mode!r}")
    if eager_mode:
        if engine == "turbomind":
            raise BadInput("eager mode is a setting of LMDeploy's PyTorch engine: drop it, or choose that engine")
        extra["eager_mode"] = True
    return extra


async def _abort_on(cancel: threading.Event, session: Any, every_s: float = 0.05) -> None:
    """Once `cancel` is set (a thread event, set from any thread: polled), abort the session, and
    again every `every_s` until the request ends (the caller cancels this task then):
    `Session.async_abort` does nothing while the request still waits for a request handle, so one
    abort sent then is lost and the reply would run to its length."""
    while True:
        if cancel.is_set():
            await session.async_abort()
        await asyncio.sleep(every_s)


def _in_process(config: Any) -> bool:
    """Whether the PyTorch engine samples in this process (lmdeploy 0.18's
    get_distributed_executor_backend: 'uni' for a world of one, unless the environment names another)."""
    world = int(getattr(config, "tp", 1) or 1) * int(getattr(config, "dp", 1) or 1)
    return world == 1 and os.environ.get("LMDEPLOY_EXECUTOR_BACKEND", "uni") == "uni"


def _import_lmdeploy() -> Any:
    try:
        import lmdeploy
    except (ImportError, OSError) as ex:  # OSError: a CUDA library it links against is missing
        raise EngineUnavailable(f"lmdeploy is not installed ({ex}): {INSTALL_HINT}") from ex
    return lmdeploy


def _context_length(engine: Any, hf: Any) -> int:
    """The engine's session_len (prompt + reply), else the model config's."""
    session_len = getattr(engine, "session_len", None)
    if session_len:
        return int(session_len)
    cfg = getattr(engine, "hf_cfg", None)
    return int(getattr(cfg, "max_position_embeddings", 0) or hf.model_max_length)


def _stop_ids(engine: Any) -> frozenset[int]:
    """What 0.18 stops greedy decoding on (AsyncEngine._determine_gen_config): the chat template's
    stop words, the tokenizer's eos and the generation config's eos."""
    stop: set[int] = set(getattr(engine, "stop_words", None) or [])
    eos = engine.tokenizer.eos_token_id
    if eos is not None:
        stop.add(eos)
    gen_eos = (getattr(engine, "hf_gen_cfg", None) or {}).get("eos_token_id")
    if gen_eos is not None:
        stop.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return frozenset(int(s) for s in stop)
