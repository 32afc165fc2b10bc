"""Hugging Face transformers engine: CPU in float32, or CUDA.

Single pass: a logits processor sees each step's raw logits inside `generate` and scores the
previous step as soon as its chosen token is known, so no [steps, vocab] tensor is stored and
no second forward runs. Verification rescoring reuses the prompt's KV cache.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import BadInput, EngineUnavailable, ModelNotFound
from ..models import resolve_model
from ..scoring import CHUNK_ROWS, StepScores, empty_scores, score_chunks, score_rows
from .base import GenerateRequest, Generation
from .hf_text import HFTextMixin

SCORE_CHUNK_TOKENS = 64  # teacher forcing feeds this many tokens per forward: [64, vocab] logits at most


class StepRecorder:
    """A logits processor that scores step t-1 when step t starts (its chosen id is then known).

    Holds one [batch, vocab] row block at a time. Returns the logits unchanged, so decoding
    is exactly what it would be without it.
    """

    def __init__(self, top_k: int, on_step: Callable[[list[int]], None] | None = None) -> None:
        self.top_k = top_k
        self.on_step = on_step  # called with each step's chosen ids, one per batch row
        self._pending: torch.Tensor | None = None  # [batch, vocab], raw logits of the last step
        self.parts: list[StepScores] = []  # one per step, each [batch] rows

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._flush(input_ids[:, -1])
        self._pending = scores.detach().clone()
        return scores

    def _flush(self, chosen: torch.Tensor) -> None:
        if self._pending is not None:
            self.parts.append(score_rows(self._pending, chosen, self.top_k))
            self._pending = None
            if self.on_step is not None:
                self.on_step(chosen.tolist())

    def finish(self, last_chosen: torch.Tensor) -> list[StepScores]:
        """Score the final step; -> per batch row, StepScores over all steps."""
        self._flush(last_chosen)
        if not self.parts:
            return [empty_scores(self.top_k) for _ in range(last_chosen.shape[0])]
        steps = self.parts
        batch = steps[0].logprob.shape[0]
        return [StepScores.cat([s.slice(b, b + 1) for s in steps]) for b in range(batch)]


class _RowStops:
    """Per-row stopping: a row ends at its own max_new_tokens, or when its cancel event is set.

    A row stopped by its cancel event keeps generating padding in the batch (HF pads finished
    rows with the pad id, which for many chat models is the end-of-turn token): `cancelled_at`
    records how many real tokens it had, so its reply ends at its last real token.
    """

    def __init__(self, requests: Sequence[GenerateRequest], start: int) -> None:
        self.start = start  # padded prompt length
        self.limits = torch.tensor([r.max_new_tokens for r in requests])
        self.cancels = [r.cancel for r in requests]
        self.cancelled_at: list[int | None] = [None] * len(requests)  # new tokens when cancel was seen
        self._done = torch.zeros(len(requests), dtype=torch.bool)

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        n_new = input_ids.shape[1] - self.start
        for b, cancel in enumerate(self.cancels):
            if cancel is not None and not self._done[b] and cancel.is_set():
                self.cancelled_at[b] = n_new
        self._done |= n_new >= self.limits
        self._done |= torch.tensor([c is not None for c in self.cancelled_at])
        return self._done.clone().to(input_ids.device)


class _RowStreams:
    """Hands each row its new ids as they come, until that row's stop id, limit or cancel."""

    def __init__(self, requests: Sequence[GenerateRequest], stop_ids: frozenset[int], stops: _RowStops) -> None:
        self.requests = requests
        self.stop_ids = stop_ids
        self.stops = stops
        self.counts = [0] * len(requests)
        self.done = [False] * len(requests)

    def __call__(self, chosen: list[int]) -> None:
        for b, tok in enumerate(chosen):
            req = self.requests[b]
            cut = self.stops.cancelled_at[b]
            if self.done[b] or (cut is not None and self.counts[b] >= cut):
                continue
            self.counts[b] += 1
            self.done[b] = tok in self.stop_ids or self.counts[b] >= req.max_new_tokens
            if req.on_ids is not None:
                req.on_ids([tok])


@dataclass(frozen=True)
class _RowCache:
    """One row's prompt positions out of a left-padded batch KV cache, cut out only when
    verification asks for them (a copy per row would cost memory nobody may use)."""

    cache: Any  # the batch's DynamicCache: [batch, heads, padded_len + steps, head_dim] per layer
    row: int
    pad: int  # left padding of this row

    def prompt_cache(self, n_keep: int) -> Any:
        """A DynamicCache of this row's first n_keep prompt positions (None if it cannot be cut)."""
        from transformers import DynamicCache

        layers = getattr(self.cache, "layers", None)
        if not layers or any(getattr(layer, "is_sliding", False) for layer in layers):
            return None
        cut = slice(self.pad, self.pad + n_keep)
        return DynamicCache(ddp_cache_data=[
            (layer.keys[self.row : self.row + 1, :, cut].clone(), layer.values[self.row : self.row + 1, :, cut].clone())
            for layer in layers
        ])


PRECISIONS = ("float32", "bfloat16", "int8")


class TransformersEngine(HFTextMixin):
    backend = "transformers"
    concurrent = False  # one thread owns the model: the service batches requests for it
    server_template = False  # prompt ids come from the local chat template

    def __init__(self, model: Any, tokenizer: Any, model_name: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.device = next(model.parameters()).device
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.score_source = f"{dtype} logits ({self.device.type}), softmax in float32"
        cfg = model.config
        self.context_length = int(getattr(cfg, "max_position_embeddings", 0) or tokenizer.model_max_length)
        self.vocab_size = min(len(tokenizer), int(cfg.vocab_size))
        stop = set()
        for src in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
            if src is not None:
                stop.update(src if isinstance(src, list) else [src])
        self.stop_ids = frozenset(int(s) for s in stop)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.stop_ids)
        # generate() fills unset options from the model's generation_config: keep only the special
        # ids, so no repetition penalty, min length or n-gram ban from a model's defaults ever
        # touches the logits. Greedy is then the argmax of the raw logits, and so are the scores.
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig(
            bos_token_id=model.generation_config.bos_token_id, eos_token_id=sorted(self.stop_ids),
            pad_token_id=self.pad_id,
        )
        self._init_text(tokenizer)

    @classmethod
    def load(cls, model: str | None = None, device: str | None = None, precision: str = "float32",
             **_: Any) -> TransformersEngine:
        """Load once: resolve/convert the model, then from_pretrained (float32 on CPU by default).

        precision: "float32", "bfloat16", or "int8" (torch's dynamic quantisation of the linear
        layers, CPU: int8 weights, float32 activations): to see what lower precision does to the
        model's confidence (the Compare tab).
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if precision not in PRECISIONS:
            raise BadInput(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        name, source = resolve_model(model)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if precision == "int8" and device != "cpu":
            raise EngineUnavailable("int8 dynamic quantisation runs on the CPU only")
        t0 = time.perf_counter()
        print(f"greedyscore: loading {name} ({precision}) on {device} ...", file=sys.stderr, flush=True)
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        try:
            tok = AutoTokenizer.from_pretrained(source)
            lm = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device).eval()
        except OSError as ex:
            raise ModelNotFound(f"could not load model {model!r}: {ex}".splitlines()[0]) from ex
        if precision == "int8":
            import warnings

            from torch.ao.quantization import quantize_dynamic

            with warnings.catch_warnings():  # deprecated for torchao, still in the pinned torch 2.13
                warnings.simplefilter("ignore")
                lm = quantize_dynamic(lm, {torch.nn.Linear}, dtype=torch.qint8)
        print(f"greedyscore: {name} loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        engine = cls(lm, tok, name)
        engine.source, engine.precision = source, precision  # what the Compare tab reloads at another precision
        if precision == "int8":
            engine.score_source = "int8 dynamic-quantised linear layers, float32 logits (cpu), softmax in float32"
        return engine

    # --- generation and scoring ----------------------------------------------------------
    @torch.inference_mode()
    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        """Greedy decoding of several prompts at once.

        Steps: left-pad the prompts (attention mask, pad id); one `generate` with the
        StepRecorder (raw logits, no logits processors) and per-row stops; cut each row at its
        stop id, its own max_new_tokens or the step its cancel was seen (never a pad token);
        its scores are those of the sequence it generated.
        """
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        width = max(len(r.prompt_ids) for r in requests)
        rows = [[self.pad_id] * (width - len(r.prompt_ids)) + list(r.prompt_ids) for r in requests]
        mask = [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests]
        ids = torch.tensor(rows, device=self.device)
        stops = _RowStops(requests, width)
        recorder = StepRecorder(max(r.top_k for r in requests), _RowStreams(requests, self.stop_ids, stops))
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max(r.max_new_tokens for r in requests),
            eos_token_id=sorted(self.stop_ids),
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            use_cache=True,
        )
        out = self.model.generate(
            input_ids=ids,
            attention_mask=torch.tensor(mask, device=self.device),
            generation_config=config,
            logits_processor=LogitsProcessorList([recorder]),
            stopping_criteria=StoppingCriteriaList([stops]),
        )
        per_row = recorder.finish(out.sequences[:, -1])
        return [self._row(b, req, out, per_row[b], width, stops.cancelled_at[b], len(requests))
                for b, req in enumerate(requests)]

    def _row(
        self, b: int, req: GenerateRequest, out: Any, steps: StepScores, width: int, cancelled_at: int | None,
        batch: int,
    ) -> Generation:
        """Row b of a batched generate: its real tokens (up to a stop id, its limit or its cancel)."""
        real = cancelled_at if cancelled_at is not None else req.max_new_tokens
        new = [int(t) for t in out.sequences[b, width:]][:real]
        end = next((i + 1 for i, t in enumerate(new) if t in self.stop_ids), len(new))
        new = new[:end]
        if new and new[-1] in self.stop_ids:
            reason = "stop"
        elif len(new) >= req.max_new_tokens:
            reason = "length"
        else:
            reason = "abort"  # cut short by its cancel event
        steps = steps.slice(0, len(new))
        steps = StepScores(steps.logprob, steps.rank, steps.entropy, steps.margin,
                           steps.top_ids[:, : req.top_k], steps.top_logprobs[:, : req.top_k])
        cache = out.cache if batch == 1 else _RowCache(out.cache, b, width - len(req.prompt_ids))
        return Generation(tuple(new), reason, steps=steps, cache=cache)

    @torch.inference_mode()
    def score_ids(
        self, context_ids: Sequence[int], target_ids: Sequence[int], top_k: int, cache: Any = None
    ) -> StepScores:
        """Teacher-forced scores of target_ids given context_ids, in chunks of tokens.

        Steps: prefill context[:-1] (or reuse `cache`, cropped to it) keeping no logits; then feed
        [context[-1]] + target[:-1] SCORE_CHUNK_TOKENS at a time, scoring each chunk's logits.
        """
        if not context_ids:
            raise ValueError("teacher forcing needs at least one context token")
        if not target_ids:
            return empty_scores(top_k)
        from transformers import DynamicCache

        n_ctx = len(context_ids)
        if isinstance(cache, _RowCache):
            cache = cache.prompt_cache(n_ctx - 1)
        elif cache is not None:
            extra = cache.get_seq_length() - (n_ctx - 1)
            if extra > 0:
                try:
                    cache.crop(-extra)  # keep the prompt's first n_ctx - 1 positions
                except (ValueError, NotImplementedError):  # e.g. sliding-window layers
                    cache = None
        if cache is None:
            cache = DynamicCache(config=self.model.config)
            if n_ctx > 1:
                prefix = torch.tensor([list(context_ids[:-1])], device=self.device)
                self.model(input_ids=prefix, cache=cache, use_cache=True, logits_to_keep=1)
        feed = [context_ids[-1], *target_ids[:-1]]
        chosen = torch.tensor(list(target_ids))

        def chunks():
            for i in range(0, len(feed), SCORE_CHUNK_TOKENS):
                part = torch.tensor([feed[i : i + SCORE_CHUNK_TOKENS]], device=self.device)
                out = self.model(input_ids=part, cache=cache, use_cache=True)
                yield from out.logits[0].split(CHUNK_ROWS)

        return score_chunks(chunks(), chosen, top_k)
