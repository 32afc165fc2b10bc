"""Our own greedy decode loop over a transformers model's forward: rows join and leave at any step.

Why not `generate`: its per-step bookkeeping (logits processors, stopping criteria, cache
handling) costs as much as a small model's forward on a CPU, and a `generate` batch is fixed:
a request that arrives mid-batch waits for all of it, a finished row keeps computing padding.

`DecodeBatch` keeps one left-padded KV cache for all rows. `join` prefills a request alone and
adds its row (its logits of the next step ready); `step` picks every row's token (the argmax of
the raw float32 logits), scores it from the same logits (single pass: `score_rows`), streams it,
lets finished or cancelled rows leave (their compute is freed at once), then runs one forward
over the rows that remain. Each row has its own positions; padding is masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..scoring import StepScores, empty_scores, score_rows
from .base import GenerateRequest, Generation
from .llama_step import LlamaStep


@dataclass
class _Row:
    request: GenerateRequest
    tag: Any  # what `step` hands back with the row's Generation (default: the request)
    length: int  # real tokens in the cache (prompt + generated so far, fed back)
    ids: list[int] = field(default_factory=list)
    parts: list[StepScores] = field(default_factory=list)
    prompt_cache: Any = None  # the prompt's KV, for verification rescoring


class DecodeBatch:
    """Rows decoding together; not thread-safe (one worker thread owns it)."""

    def __init__(self, model: Any, stop_ids: frozenset[int], keep_prompt_cache: bool = True,
                 fast: bool = True) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.stop_ids = stop_ids
        self.keep_prompt_cache = keep_prompt_cache
        self.rows: list[_Row] = []
        # per layer [rows, kv_heads, capacity, head_dim]: the first `width` positions are used, the
        # rest is room to write the next steps' keys and values in place (no copy of the cache per step)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.mask = torch.zeros(0, 0, dtype=torch.long)  # [rows, width]: 1 where a real token is cached
        self.logits = torch.zeros(0, 0)  # [rows, vocab]: each row's next-token logits
        self.fast_step = LlamaStep.of(model) if fast else None  # decode steps without transformers' forward

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def cache_dtype(self) -> torch.dtype | None:
        """float32 where the C step runs: it keeps float32 keys and values whatever the model's dtype
        (a bfloat16 prefill's are widened at join); None: the model's own."""
        return torch.float32 if self.fast_step is not None and self.fast_step.native is not None else None

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    @torch.inference_mode()
    def join(self, request: GenerateRequest, tag: Any = None) -> None:
        """Prefill the request alone and add its row (its next-token logits kept for `step`)."""
        from transformers import DynamicCache

        ids = torch.tensor([list(request.prompt_ids)], device=self.device)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        keys = [layer.keys for layer in cache.layers]
        values = [layer.values for layer in cache.layers]
        n = ids.shape[1]
        row = _Row(request, request if tag is None else tag, n)
        if self.keep_prompt_cache and n > 1:  # n - 1 positions: what verification's teacher forcing prefills
            row.prompt_cache = DynamicCache(ddp_cache_data=[(k[:, :, : n - 1].clone(), v[:, :, : n - 1].clone())
                                                            for k, v in zip(keys, values)])
        if self.cache_dtype is not None and keys[0].dtype != self.cache_dtype:  # after the prompt cache: model dtype
            keys = [k.to(self.cache_dtype) for k in keys]
            values = [v.to(self.cache_dtype) for v in values]
        logits = out.logits[:, -1].float()
        if not self.rows:
            self.keys, self.values = keys, values
            self.mask = torch.ones(1, n, dtype=torch.long)
            self.logits = logits
        else:
            grow = n - self.width
            if grow > 0:  # the new prompt is longer: pad every row on the left
                self._pad_left(grow)
            width = self.width
            pad = width - n
            self.keys = [torch.cat([k[:, :, :width], _left_pad(nk, pad)]) for k, nk in zip(self.keys, keys)]
            self.values = [torch.cat([v[:, :, :width], _left_pad(nv, pad)]) for v, nv in zip(self.values, values)]
            new_mask = torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones(1, n, dtype=torch.long)], 1)
            self.mask = torch.cat([self.mask, new_mask])
            self.logits = torch.cat([self.logits, logits])
        self.rows.append(row)

    def _pad_left(self, n: int) -> None:
        width = self.width
        self.keys = [_left_pad(k[:, :, :width], n) for k in self.keys]
        self.values = [_left_pad(v[:, :, :width], n) for v in self.values]
        self.mask = torch.cat([torch.zeros(len(self.rows), n, dtype=torch.long), self.mask], 1)

    @torch.inference_mode()
    def step(self) -> list[tuple[Any, Generation]]:
        """One token for every row; -> (tag, Generation) of the rows that finished."""
        if not self.rows:
            return []
        done: list[tuple[Any, Generation]] = []
        keep: list[int] = []
        cancelled = [r.request.cancel is not None and r.request.cancel.is_set() for r in self.rows]
        live = [i for i, c in enumerate(cancelled) if not c]
        chosen = self.logits.argmax(-1)
        if live:
            top_k = max(self.rows[i].request.top_k for i in live)
            scores = score_rows(self.logits[live], chosen[live], top_k)
        j = -1
        for i, row in enumerate(self.rows):
            if cancelled[i]:  # Stop seen: the reply ends at the last token the model really chose
                done.append((row.tag, self._finish(row, "abort")))
                continue
            j += 1  # this row's place among the live rows
            tok = int(chosen[i])
            row.ids.append(tok)
            row.parts.append(scores.slice(j, j + 1))
            if row.request.on_ids is not None:
                row.request.on_ids([tok])
            if tok in self.stop_ids:
                done.append((row.tag, self._finish(row, "stop")))
            elif len(row.ids) >= row.request.max_new_tokens:
                done.append((row.tag, self._finish(row, "length")))
            else:
                keep.append(i)
        if len(keep) < len(self.rows):
            self._select(keep)
        if self.rows:
            self._forward(chosen[keep] if keep else chosen[:0])
        return done

    def _finish(self, row: _Row, reason: str) -> Generation:
        k = row.request.top_k
        steps = StepScores.cat(row.parts) if row.parts else empty_scores(k)
        steps = StepScores(steps.logprob, steps.rank, steps.entropy, steps.margin, steps.top_ids[:, :k],
                           steps.top_logprobs[:, :k])
        return Generation(tuple(row.ids), reason, steps=steps, cache=row.prompt_cache)

    def clear(self) -> list[Any]:
        """Drop every row (after a failed step); -> their tags."""
        tags = [r.tag for r in self.rows]
        self._select([])
        return tags

    def close(self) -> None:
        """The scheduler has ended: free the cache."""
        self.clear()

    def _select(self, keep: list[int]) -> None:
        """Keep these rows (finished ones leave); drop columns that are padding in every row left."""
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.keys, self.values, self.logits = [], [], torch.zeros(0, 0)
            self.mask = torch.zeros(0, 0, dtype=torch.long)
            return
        index = torch.tensor(keep)
        width = self.width
        self.mask = self.mask[index]
        first = int(self.mask.any(0).nonzero()[0])  # the first column some row still uses
        self.mask = self.mask[:, first:]
        self.keys = [k[index, :, first:width] for k in self.keys]
        self.values = [v[index, :, first:width] for v in self.values]
        self.logits = self.logits[index]

    def _forward(self, tokens: torch.Tensor) -> None:
        """Feed each row its chosen token: one forward over the batch, each row at its own position."""
        from transformers import DynamicCache

        positions = torch.tensor([[r.length] for r in self.rows])
        col = self.width  # where this token's keys and values go
        self.mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=torch.long)], 1)
        if self.fast_step is not None:
            self._reserve(col + 1)
            padded = bool((self.mask == 0).any())
            self.logits = self.fast_step(tokens.to(self.device), positions.view(-1).to(self.device),
                                         self.mask.to(self.device) if padded else None, self.keys, self.values,
                                         col).float()
            for r in self.rows:
                r.length += 1
            return
        cache = DynamicCache(ddp_cache_data=[(k[:, :, :col], v[:, :, :col]) for k, v in zip(self.keys, self.values)])
        out = self.model(input_ids=tokens.view(-1, 1).to(self.device), attention_mask=self.mask.to(self.device),
                         position_ids=positions.to(self.device), cache=cache, use_cache=True)
        self.keys = [layer.keys for layer in cache.layers]
        self.values = [layer.values for layer in cache.layers]
        self.logits = out.logits[:, -1].float()
        for r in self.rows:
            r.length += 1


    def _reserve(self, need: int) -> None:
        """Room for `need` positions in every layer's keys and values, growing by half at a time
        (at least 64 positions), so a step writes in place and the cache is copied only now and then."""
        cap = self.keys[0].shape[2]
        if cap >= need:
            return
        cap = max(need, cap + max(64, cap // 2))
        used = self.width - 1  # the mask already counts the position being written

        def grown(t: torch.Tensor) -> torch.Tensor:
            out = t.new_empty(t.shape[0], t.shape[1], cap, t.shape[3])
            out[:, :, :used] = t[:, :, :used]
            return out

        self.keys = [grown(k) for k in self.keys]
        self.values = [grown(v) for v in self.values]


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    """[rows, heads, width, dim] with n zero positions in front (masked out)."""
    if n <= 0:
        return t
    shape = (t.shape[0], t.shape[1], n, t.shape[3])
    return torch.cat([t.new_zeros(shape), t], 2)


def generate_all(model: Any, stop_ids: frozenset[int], requests: Sequence[GenerateRequest],
                 fast: bool = True) -> list[Generation]:
    """A fixed batch through the loop: every request joins, steps run until all have finished
    (fast=False: transformers' forward for every step, not the lean Llama step)."""
    batch = DecodeBatch(model, stop_ids, fast=fast)
    for i, r in enumerate(requests):
        batch.join(r, tag=i)
    results: dict[int, Generation] = {}
    while len(batch):
        for i, gen in batch.step():
            results[i] = gen
    return [results[i] for i in range(len(requests))]
