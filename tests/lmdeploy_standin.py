"""A CPU stand-in for LMDeploy's GPU engine only: everything above it is lmdeploy 0.18's own code.

`StandinPipeline` is a real `lmdeploy.Pipeline` whose `AsyncEngine` builds `TransformersBackend`
instead of TurboMind / the PyTorch engine. So `stream_infer`, `_infer`, `AsyncEngine.preprocess`
(chat template + `Tokenizer.encode(prompt, add_bos=True)`, the deep copy of the GenerationConfig),
`AsyncEngine.generate` (incremental token_ids, the stop id held back unless
include_stop_str_in_output, finish_reason, logits sliced around the stop id), `async_get_logits`,
`Session.abort` and `_EventLoopThread` all run unchanged; only the forward passes are transformers
on CPU.

`TransformersBackend` mirrors the engine surface those call (read from lmdeploy 0.18):
- `engine_config` (the backend config, `max_batch_size` filled in), `create_instance()`, `close()`
  (pytorch.engine.Engine / turbomind.TurboMind);
- `EngineInstance.async_stream_infer(session_id, input_ids, gen_config, multimodal, adapter_name,
  stream_output, **kwargs)` yielding `EngineOutput`s whose token_ids are the *new* ids of each
  step (SUCCESS), the last step's ids coming with FINISH, CANCEL after `async_cancel`, and
  INPUT_LENGTH_ERROR for a too-long input (pytorch/engine/engine_instance.py);
- one step loop for all running requests, as the engines schedule them: each step forwards every
  running sequence (a prompt in chunks of `max_prefill_token_num`, then one token), stacks their
  last rows into one [batch, vocab] tensor and samples it as the PyTorch engine's
  FusedLogitsProcessor does: raw logprobs first, then each sequence's
  `gen_config.logits_processors` called as `processor(all_ids[i], scores[i])` on its row (also
  for the last row of a prefill chunk before the last, whose pick is dropped), then argmax. A
  request that has ended may still be in a step under way (the engine runs ahead): its processors
  see one more row. Forwards run one sequence at a time (a CPU has nothing to gain from batching
  them; the sampling stage is what greedyscore hooks into). TurboMind ignores logits processors;
- `output_logits='all'` with max_new_tokens=0: logits of every input position, CPU, model dtype
  (what async_get_logits reads; the PyTorch engine drops any other output_logits request);
  TurboMind's `output_logits='generation'`: every output carries the rows of all tokens generated
  so far (`logits[:step - offset - 1]` in turbomind.py), model dtype;
- cancel: `async_cancel(session_id)` ends that session's running request (CANCEL at its next
  step) and is forgotten when the request ends; a cancel for a session with no request running
  does nothing, as in the engines (so a Stop sent too early is lost here too);
- logprobs: with `logprobs_mode='raw_logprobs'` (PyTorch engine) a dict {chosen id: logprob, then
  the top-K} from a log-softmax of the raw logits in the model's dtype, as
  FusedLogitsProcessor computes it (`scores.log_softmax(-1)`, no cast), then compute_logprobs;
  TurboMind renormalises after top-k, so greedy gives {chosen id: 0.0}; otherwise None.

Greedy only (AsyncEngine turns do_sample=False into top_k=1); sampling is not modelled.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from lmdeploy import GenerationConfig, PytorchEngineConfig, TurbomindEngineConfig
from lmdeploy.messages import EngineOutput, ResponseType
from lmdeploy.pipeline import Pipeline, _EventLoopThread
from lmdeploy.serve.core.async_engine import AsyncEngine
from lmdeploy.utils import get_logger

logger = get_logger("lmdeploy")


@dataclass
class _Seq:
    """One running request in the step loop."""

    session_id: int
    gen_config: GenerationConfig
    cache: Any
    todo: list[int]  # ids not yet forwarded: the prompt (in chunks), then the last pick
    ids: list[int] = field(default_factory=list)  # forwarded so far (lmdeploy's all_ids)
    out: asyncio.Queue = field(default_factory=asyncio.Queue)  # (pick, raw logits row) per step
    rows: list[torch.Tensor] | None = None  # every forwarded position's logits (TurboMind output_logits)


class TransformersBackend:
    """Stands in for `turbomind.TurboMind` / `pytorch.engine.Engine`: a transformers model on CPU."""

    def __init__(self, model: Any, engine_config: Any, backend: str) -> None:
        self.model = model
        self.backend = backend
        if engine_config.max_batch_size is None:
            engine_config.max_batch_size = 4
        self.engine_config = engine_config
        self.max_session_len = engine_config.session_len
        self.chunk = getattr(engine_config, "max_prefill_token_num", None) or 1 << 30
        self.lock = threading.Lock()  # one forward at a time
        self.requests: list[dict[str, Any]] = []  # what the AsyncEngine sent, for tests to inspect
        self.cancelled: set[int] = set()  # sessions whose running request was cancelled (until it ends)
        self.running: set[int] = set()  # sessions with a request in async_stream_infer
        self.cancels: list[int] = []  # every async_cancel that reached a running request, for tests
        self.seqs: dict[int, _Seq] = {}  # what the step loop decodes
        self.batch_sizes: list[int] = []  # sequences sampled together at each step, for tests
        self._loop_task: asyncio.Task | None = None

    def create_instance(self) -> StandinInstance:
        return StandinInstance(self)

    def close(self) -> None:
        pass

    @property
    def raw_logprobs(self) -> bool:
        return self.backend == "pytorch" and getattr(self.engine_config, "logprobs_mode", None) == "raw_logprobs"

    def forward(self, ids: list[int], cache: Any) -> torch.Tensor:
        """Logits [len(ids), vocab] (model dtype, CPU) of ids appended to `cache`."""
        with self.lock, torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True)
        return out.logits[0]

    def logprob_row(self, logits: torch.Tensor, chosen: int, k: int) -> dict[int, float]:
        """One step's logprobs as the engine reports them (chosen id first, then the top-k), from
        the raw logits row taken before any processor (model dtype)."""
        if not self.raw_logprobs:
            return {chosen: 0.0}  # TurboMind: renormalised over the kept top_k=1 token
        lp = torch.log_softmax(logits, dim=-1)  # [vocab], in the model's dtype
        row = {chosen: float(lp[chosen])}
        if k > 0:
            vals, idx = lp.topk(k)
            row.update(zip(idx.tolist(), vals.tolist(), strict=True))
        return row

    def join(self, seq: _Seq) -> None:
        """Add a request to the step loop (started when the first one comes)."""
        self.seqs[seq.session_id] = seq
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self.seqs:
            batch = list(self.seqs.values())
            try:
                await self._step(batch)
            except Exception as ex:  # noqa: BLE001 - every request in the step sees the failure
                for seq in batch:
                    seq.out.put_nowait(ex)
                    self.seqs.pop(seq.session_id, None)
            await asyncio.sleep(0)

    async def _step(self, batch: list[_Seq]) -> None:
        """One engine step: forward each sequence's next chunk, sample all rows together."""
        rows = []
        for seq in batch:
            part, seq.todo = seq.todo[: self.chunk], seq.todo[self.chunk :]
            logits = await asyncio.to_thread(self.forward, part, seq.cache)
            rows.append(logits[-1])
            seq.ids += part
            if seq.rows is not None:
                seq.rows.append(logits)
        self.batch_sizes.append(len(batch))
        with torch.inference_mode():
            scores = torch.stack(rows)  # [batch, vocab], model dtype
            raw = scores.clone()  # logprobs are taken from the raw rows, before any processor, as lmdeploy
            if self.backend == "pytorch":
                for i, seq in enumerate(batch):
                    for processor in seq.gen_config.logits_processors or []:
                        scores[i] = processor(torch.tensor(seq.ids), scores[i])
            picks = scores.argmax(-1).tolist()
        for i, seq in enumerate(batch):
            if seq.todo:  # a prefill chunk before the last: its pick is dropped
                continue
            seq.todo = [picks[i]]
            seq.out.put_nowait((picks[i], raw[i]))


class StandinInstance:
    """Stands in for `EngineInstance` (PyTorch) / `TurboMindInstance`."""

    def __init__(self, engine: TransformersBackend) -> None:
        self.engine = engine

    async def async_cancel(self, session_id: int) -> None:
        if session_id in self.engine.running:
            self.engine.cancelled.add(session_id)
            self.engine.cancels.append(session_id)

    async def async_stream_infer(
        self,
        session_id: int,
        input_ids: list[int],
        gen_config: GenerationConfig | None = None,
        multimodal: Any = None,
        adapter_name: str | None = None,
        stream_output: bool = False,
        **kwargs: Any,
    ):
        """Greedy steps; yields EngineOutput(SUCCESS, [new id]) per step when streaming, the last
        ids with FINISH (all of them when not streaming), or CANCEL once cancelled."""

        engine = self.engine
        gen_config = gen_config or GenerationConfig()
        engine.requests.append(dict(session_id=session_id, input_ids=list(input_ids), gen_config=gen_config))
        engine.running.add(session_id)
        try:
            if gen_config.max_new_tokens == 0:
                yield await self._prompt_logits(list(input_ids), gen_config)
            else:
                async for out in self._steps(session_id, list(input_ids), gen_config, stream_output):
                    yield out
        finally:
            engine.seqs.pop(session_id, None)
            engine.running.discard(session_id)
            engine.cancelled.discard(session_id)

    async def _prompt_logits(self, input_ids: list[int], gen_config: GenerationConfig) -> EngineOutput:
        """The scoring-only request (async_get_logits): every input position's logits with 'all'."""
        from transformers import DynamicCache

        engine = self.engine
        if len(input_ids) > engine.max_session_len:
            return EngineOutput(ResponseType.INPUT_LENGTH_ERROR, [])
        cache = DynamicCache(config=engine.model.config)
        parts = [await asyncio.to_thread(engine.forward, input_ids[i : i + engine.chunk], cache)
                 for i in range(0, len(input_ids), engine.chunk)]
        logits = torch.cat(parts) if gen_config.output_logits == "all" else None
        return EngineOutput(ResponseType.FINISH, [], logits=logits)

    async def _steps(self, session_id: int, input_ids: list[int], gen_config: GenerationConfig,
                     stream_output: bool):
        from transformers import DynamicCache

        engine = self.engine
        if len(input_ids) > engine.max_session_len:
            yield EngineOutput(ResponseType.INPUT_LENGTH_ERROR, [])
            return
        seq = _Seq(session_id, gen_config, DynamicCache(config=engine.model.config), list(input_ids))
        # TurboMind's output_logits: each output carries logits[:step - offset - 1] of all positions
        # (turbomind.py _get_logits), offset 0 for 'all', len(input) - 1 for 'generation'
        offset = {"all": 0, "generation": len(input_ids) - 1}.get(gen_config.output_logits)
        if engine.backend == "turbomind" and offset is not None:
            seq.rows = []
        engine.join(seq)
        stop_ids = set() if gen_config.ignore_eos else set(gen_config.stop_token_ids or [])
        want_lp = gen_config.logprobs is not None and (engine.raw_logprobs or engine.backend == "turbomind")
        pending: list[int] = []  # ids not yet sent (all of them when not streaming)
        pending_lp: list[dict[int, float]] = []
        n_out = 0  # ids generated so far

        def output(status: ResponseType, ids: list[int]) -> EngineOutput:
            logits = None if seq.rows is None else torch.cat(seq.rows)[offset : len(input_ids) + n_out - 1]
            return EngineOutput(status, ids, logprobs=pending_lp or None, logits=logits)

        for step in range(gen_config.max_new_tokens):
            item = await seq.out.get()
            if isinstance(item, Exception):
                yield EngineOutput(ResponseType.INTERNAL_ENGINE_ERROR, [])
                return
            if session_id in engine.cancelled:
                yield EngineOutput(ResponseType.CANCEL, [])
                return
            tok, raw = item
            pending.append(tok)
            n_out += 1
            if want_lp:
                pending_lp.append(engine.logprob_row(raw, tok, gen_config.logprobs))
            if tok in stop_ids or step + 1 == gen_config.max_new_tokens:
                break
            if stream_output:
                yield output(ResponseType.SUCCESS, pending)
                pending, pending_lp = [], []
        engine.seqs.pop(session_id, None)
        yield output(ResponseType.FINISH, pending)


class StandinAsyncEngine(AsyncEngine):
    """lmdeploy's AsyncEngine, building TransformersBackend instead of a GPU engine."""

    def __init__(self, model_path: str, model: Any, backend: str, backend_config: Any) -> None:
        self._standin_model = model
        super().__init__(model_path, backend=backend, backend_config=backend_config)

    def _build_turbomind(self, model_path: str, backend_config: Any = None, **kwargs: Any) -> TransformersBackend:
        return TransformersBackend(self._standin_model, backend_config, "turbomind")

    def _build_pytorch(self, model_path: str, backend_config: Any = None, **kwargs: Any) -> TransformersBackend:
        return TransformersBackend(self._standin_model, backend_config, "pytorch")


class StandinPipeline(Pipeline):
    """`lmdeploy.Pipeline` over TransformersBackend; __init__ mirrors Pipeline.__init__ minus the
    model download and autoget_backend_config (which would look for TurboMind / CUDA)."""

    def __init__(
        self,
        model_path: str,
        model: Any,
        backend: str = "pytorch",
        backend_config: Any = None,
        log_level: str = "WARNING",
    ) -> None:
        logger.setLevel(log_level)
        if backend_config is None:
            backend_config = (
                PytorchEngineConfig(logprobs_mode="raw_logprobs", enable_prefix_caching=False, enable_metrics=False)
                if backend == "pytorch"
                else TurbomindEngineConfig(enable_prefix_caching=False, enable_metrics=False)
            )
        self.async_engine = StandinAsyncEngine(model_path, model, backend, backend_config)
        self.internal_thread = _EventLoopThread(daemon=True)
        self.limiter = None
        self.session_mgr = self.async_engine.session_mgr
        self.backend_config = self.async_engine.backend_config
        self.async_engine.start_loop(self.internal_thread.loop, use_async_api=False)

    @property
    def backend(self) -> TransformersBackend:
        return self.async_engine.engine
