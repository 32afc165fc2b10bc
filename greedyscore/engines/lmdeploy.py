"""LMDeploy engine: greedy generation on a `lmdeploy.Pipeline` (TurboMind or PyTorch engine), CUDA only.

The prompt ids are ours, handed to `AsyncEngine.preprocess(input_ids=...)`, so the ids scored are
the ids consumed. LMDeploy's greedy logprobs are all 0.0 (renormalised after top_k=1), so scores come
from the raw logits of the generating pass (`lmdeploy_steps`): a logits processor on the PyTorch
engine, the generated rows (`output_logits`) on TurboMind; where they cannot be placed on the reply,
the service rescores it with `score_ids`. lmdeploy is imported inside functions only: a CPU install
never needs it (tested on CPU against `tests/lmdeploy_standin.py`, on a GPU by `tests/test_gpu.py`).
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
        config = getattr(pipe, "backend_config", None)
        # a logits processor runs in this process only with the one-GPU 'uni' executor (else pickled to workers)
        self.records_steps = backend_name == "pytorch" and _in_process(config)
        # raw_logprobs: the PyTorch engine's logprobs=K are a true log-softmax of the raw logits
        self.raw_logprobs = backend_name == "pytorch" and getattr(config, "logprobs_mode", None) == "raw_logprobs"
        engine = pipe.async_engine
        self.tokenizer = LMDeployTokenizer(engine)
        hf = self.tokenizer.hf
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
    def load(cls, model: str | None = None, engine: str | None = "turbomind",
             cache_max_entry_count: float | None = None, max_batch_size: int | None = None,
             session_len: int | None = None, eager_mode: bool = False, max_prefill_token_num: int | None = None,
             **_: Any) -> LMDeployEngine:
        """A pipeline with prefix caching off (async_get_logits needs all rows recomputed); engine None:
        TurboMind when built, else PyTorch (with raw logprobs, to cross-check). The settings are
        `engine_settings`' (the CLI's --kv-cache, --max-batch-size, --session-len, --eager)."""
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
        """Greedy, stop token kept, with this engine's source of scores (recorder or generated rows)."""
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
        """Each request on the pipeline's event loop, concurrently (LMDeploy batches them)."""
        futures = [self._submit(self._generate(r)) for r in requests]
        return [self._wait(f, "a generation") for f in futures]

    def _submit(self, coro: Any) -> concurrent.futures.Future:
        thread = self.pipe.internal_thread
        if getattr(thread, "closed", False) or not thread.thread.is_alive() or thread.loop.is_closed():
            coro.close()
            raise EngineUnavailable(LOOP_DEAD)
        return asyncio.run_coroutine_threadsafe(coro, thread.loop)

    def _wait(self, future: concurrent.futures.Future, what: str) -> Any:
        """The future's result; a dead or stuck loop is a clear error, not a visitor waiting forever."""
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
        """Greedy decoding of exactly req.prompt_ids (0.18's preprocess passes `input_ids` through
        untouched), scored in the same pass; Stop aborts the lmdeploy session."""
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
        """Rows the PyTorch engine samples before a reply: one per prefill chunk but the last."""
        chunk = int(getattr(self.pipe.backend_config, "max_prefill_token_num", 0) or 0)
        return max(0, -(-n_prompt // chunk) - 1) if chunk > 0 else 0

    def score_ids(self, context_ids: Sequence[int], target_ids: Sequence[int], top_k: int,
                  cache: Any = None) -> StepScores:
        """Teacher-forced scores from one prefill's raw logits (`async_get_logits`); `cache` is unused."""
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
        """Raw logits [len(ids), vocab] of one prefill (CPU, model dtype), within the rescoring budget."""
        with self.rescores.hold(len(ids) * vocab_size * 4):  # float32 after .float(): the larger copy
            future = self._submit(self.pipe.async_engine.async_get_logits([ids]))
            return self._wait(future, "a rescoring")[0]


def engine_settings(engine: str | None, cache_max_entry_count: float | None, max_batch_size: int | None,
                    session_len: int | None, eager_mode: bool,
                    max_prefill_token_num: int | None = None) -> dict[str, Any]:
    """The backend config's fields, each checked with a message naming it (lmdeploy's checks are bare
    asserts); prefix caching and metrics (a Prometheus logger nothing reads) off."""
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
    """Once `cancel` is set, abort the session every `every_s` until the caller cancels this task: an
    abort sent while the request still waits for a request handle is lost."""
    while True:
        if cancel.is_set():
            await session.async_abort()
        await asyncio.sleep(every_s)


def _in_process(config: Any) -> bool:
    """Whether the PyTorch engine samples in this process (0.18: 'uni' for a world of one, unless set)."""
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
    cfg = getattr(engine, "hf_cfg", None)
    return int(getattr(engine, "session_len", None) or getattr(cfg, "max_position_embeddings", 0)
               or hf.model_max_length)


def _stop_ids(engine: Any) -> frozenset[int]:
    """What 0.18 stops greedy decoding on (AsyncEngine._determine_gen_config): the chat template's
    stop words, the tokenizer's eos and the generation config's eos."""
    gen_eos = (getattr(engine, "hf_gen_cfg", None) or {}).get("eos_token_id")
    stop = [*(getattr(engine, "stop_words", None) or []), engine.tokenizer.eos_token_id,
            *(gen_eos if isinstance(gen_eos, list) else [gen_eos])]
    return frozenset(int(s) for s in stop if s is not None)
