"""Hugging Face transformers engine: CPU in float32, or CUDA.

Single pass: a logits processor sees each step's raw logits inside `generate` and scores the
previous step as soon as its chosen token is known, so no [steps, vocab] tensor is stored and
no second forward runs. Verification rescoring reuses the prompt's KV cache.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import torch

from ..errors import ModelNotFound
from ..models import resolve_model
from ..scoring import CHUNK_ROWS, StepScores, empty_scores, score_chunks, score_rows
from ..types import Message
from .base import GenerateRequest, Generation, OnIds

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
    """Per-row stopping: a row ends at its own max_new_tokens, or when its cancel event is set."""

    def __init__(self, requests: Sequence[GenerateRequest], start: int) -> None:
        self.start = start  # padded prompt length
        self.limits = torch.tensor([r.max_new_tokens for r in requests])
        self.cancels = [r.cancel for r in requests]

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = (input_ids.shape[1] - self.start) >= self.limits
        cancelled = torch.tensor([bool(c is not None and c.is_set()) for c in self.cancels])
        return (done | cancelled).to(input_ids.device)


class _RowStreams:
    """Hands each row its new ids as they come, until that row's stop id or limit."""

    def __init__(self, requests: Sequence[GenerateRequest], stop_ids: frozenset[int]) -> None:
        self.requests = requests
        self.stop_ids = stop_ids
        self.counts = [0] * len(requests)
        self.done = [False] * len(requests)

    def __call__(self, chosen: list[int]) -> None:
        for b, tok in enumerate(chosen):
            req = self.requests[b]
            if self.done[b]:
                continue
            self.counts[b] += 1
            self.done[b] = tok in self.stop_ids or self.counts[b] >= req.max_new_tokens
            if req.on_ids is not None:
                req.on_ids([tok])


class TransformersEngine:
    backend = "transformers"

    def __init__(self, model: Any, tokenizer: Any, model_name: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.device = next(model.parameters()).device
        cfg = model.config
        self.context_length = int(getattr(cfg, "max_position_embeddings", 0) or tokenizer.model_max_length)
        stop = set()
        for src in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
            if src is not None:
                stop.update(src if isinstance(src, list) else [src])
        self.stop_ids = frozenset(int(s) for s in stop)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.stop_ids)
        self._special = frozenset(int(i) for i in tokenizer.all_special_ids)
        self.display = lru_cache(maxsize=65536)(self._display)

    @classmethod
    def load(cls, model: str | None = None, device: str | None = None, **_: Any) -> TransformersEngine:
        """Load once: resolve/convert the model, then from_pretrained (float32 on CPU)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name, source = resolve_model(model)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        t0 = time.perf_counter()
        print(f"greedyscore: loading {name} on {device} ...", file=sys.stderr, flush=True)
        try:
            tok = AutoTokenizer.from_pretrained(source)
            lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).to(device).eval()
        except OSError as ex:
            raise ModelNotFound(f"could not load model {model!r}: {ex}".splitlines()[0]) from ex
        print(f"greedyscore: {name} loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        return cls(lm, tok, name)

    # --- ids and text -------------------------------------------------------------------
    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        msgs = [{"role": m.role, "content": m.content} for m in messages]
        ids = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        if hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    def text_ids(self, text: str) -> tuple[list[int], list[int]]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        return ([int(bos)] if bos is not None else []), [int(i) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special

    def _display(self, token_id: int) -> str:
        text = self.decode([token_id])
        if "\ufffd" not in text:
            return text
        raw = _byte_level_bytes(self.tokenizer.convert_ids_to_tokens(token_id))
        return "".join(f"\\x{b:02x}" for b in raw) if raw is not None else text

    # --- generation and scoring ----------------------------------------------------------
    def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        top_k: int,
        on_ids: OnIds | None = None,
        cancel: threading.Event | None = None,
        messages: Sequence[Message] | None = None,
    ) -> Generation:
        """One request: a batch of one, whose KV cache is kept for verification."""
        return self.generate_batch([GenerateRequest(prompt_ids, max_new_tokens, top_k, on_ids, cancel)])[0]

    @torch.inference_mode()
    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        """Greedy decoding of several prompts at once.

        Steps: left-pad the prompts (attention mask, pad id); one `generate` with the
        StepRecorder (raw logits, no logits processors) and per-row stops; cut each row at its
        stop id or its own max_new_tokens; its scores are those of the sequence it generated.
        """
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        width = max(len(r.prompt_ids) for r in requests)
        rows = [[self.pad_id] * (width - len(r.prompt_ids)) + list(r.prompt_ids) for r in requests]
        mask = [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests]
        ids = torch.tensor(rows, device=self.device)
        recorder = StepRecorder(max(r.top_k for r in requests), _RowStreams(requests, self.stop_ids))
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
            stopping_criteria=StoppingCriteriaList([_RowStops(requests, width)]),
        )
        per_row = recorder.finish(out.sequences[:, -1])
        gens = []
        for b, req in enumerate(requests):
            new = [int(t) for t in out.sequences[b, width:]][: req.max_new_tokens]
            end = next((i + 1 for i, t in enumerate(new) if t in self.stop_ids), len(new))
            new = new[:end]
            steps = per_row[b].slice(0, len(new))
            steps = StepScores(steps.logprob, steps.rank, steps.entropy, steps.margin,
                               steps.top_ids[:, : req.top_k], steps.top_logprobs[:, : req.top_k])
            if req.cancel is not None and req.cancel.is_set():
                reason = "abort"
            else:
                reason = "stop" if new and new[-1] in self.stop_ids else "length"
            gens.append(Generation(new, reason, steps=steps, cache=out.cache if len(requests) == 1 else None))
        return gens

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
        if cache is not None:
            extra = cache.get_seq_length() - (n_ctx - 1)
            if extra > 0:
                cache.crop(-extra)  # keep the prompt's first n_ctx - 1 positions
        else:
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


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of the GPT-2 byte-level alphabet (printable stand-ins for the 256 bytes)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def _byte_level_bytes(token: str | None) -> bytes | None:
    """Example: _byte_level_bytes("ä½") -> b"\\xe4\\xbd"; None when not a byte-level token."""
    if token is None:
        return None
    table = _unicode_to_byte()
    if token.startswith("<0x") and token.endswith(">") and len(token) == 6:  # SentencePiece byte fallback
        return bytes([int(token[3:5], 16)])
    if all(ch in table for ch in token):
        return bytes(table[ch] for ch in token)
    return None
