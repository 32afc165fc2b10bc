"""The scores of LMDeploy's generating pass, without a second forward: the PyTorch engine's rows
through a logits processor (`StepRecorder`), TurboMind's from its outputs (`Collected`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from ..scoring import CHUNK_ROWS, StepScores, empty_scores, greedy_steps, score_chunks, summarise_rows


class StepRecorder:
    """A logits processor for LMDeploy's PyTorch engine: each raw row of one request (before penalties
    and temperature) is copied into a CHUNK-row buffer on its device, and a full buffer summarised
    (`scoring.summarise_rows`) in one batched call on the engine's stream: one kernel per step, nothing
    copied or waited for while decoding. AsyncEngine deep-copies its config: a copy records here."""

    CHUNK = 16  # rows a request buffers: 16 x a 152k vocab in bf16 is 4.9 MB, outside lmdeploy's KV budget

    def __init__(self, top_k: int) -> None:
        self.top_k = top_k
        self._buf: torch.Tensor | None = None
        self._n = 0  # rows in the buffer
        self._parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._stream: Any = None  # the stream the engine samples on (CUDA)
        self._lock = threading.Lock()  # the engine may run a step ahead while `steps` reads
        self._closed = False

    def __call__(self, all_ids: Any, scores: torch.Tensor) -> torch.Tensor:
        with self._lock:
            if self._closed:
                return scores
            if self._buf is None:
                self._buf = scores.new_empty(self.CHUNK, scores.shape[-1])
                self._stream = torch.cuda.current_stream() if scores.is_cuda else None
            self._buf[self._n].copy_(scores)
            self._n += 1
            if self._n == self.CHUNK:
                self._flush()
        return scores

    def __deepcopy__(self, memo: dict) -> StepRecorder:
        return self

    def _flush(self) -> None:
        if self._n and self._buf is not None:
            self._parts.append(summarise_rows(self._buf[: self._n], self.top_k))  # queued before the next copy
            self._n = 0

    async def steps(self, chosen: Sequence[int], prefer: int | None = None) -> StepScores | None:
        """The rows placed on the reply's ids (`scoring.greedy_steps`), None where they cannot be. The
        copy is polled, not waited for: this runs on the event loop that also drives the engine."""
        with self._lock:
            self._closed = True
            on_stream = torch.cuda.stream(self._stream) if self._stream is not None else nullcontext()
            with on_stream:
                self._flush()
                parts, self._parts, self._buf = self._parts, [], None
                if not parts:
                    return None if chosen else empty_scores(self.top_k)
                cols = [torch.cat(col) for col in zip(*parts)]
                done = None
                if self._stream is not None:
                    cols = [c.to("cpu", non_blocking=True) for c in cols]  # into pinned memory
                    done = torch.cuda.Event()
                    done.record()
        while done is not None and not done.query():
            await asyncio.sleep(0.001)
        top_lp, top_ids, entropy = cols
        return greedy_steps(top_lp, top_ids, entropy, chosen, self.top_k, prefer)


class Collected:
    """One `AsyncEngine.generate` stream added up: ids, raw logprobs, the finish reason and (TurboMind)
    the generated rows' logits: cumulative in each output, a kept stop id's row in the last one."""

    def __init__(self) -> None:
        self.token_ids: list[int] = []
        self.logprobs: list[dict[int, float]] = []
        self.reason: str | None = None
        self._rows: Any = None  # the latest cumulative rows
        self._stop_row: Any = None

    def add(self, out: Any) -> list[int]:
        """Take one output; -> its new ids."""
        new = [int(t) for t in out.token_ids or []]
        self.token_ids += new
        if out.logprobs:
            self.logprobs += out.logprobs
        if out.finish_reason is not None:
            self.reason = out.finish_reason
            if out.logits is not None and new:
                self._stop_row = out.logits
        elif out.logits is not None:
            self._rows = out.logits
        return new

    def n_rows(self) -> int:
        return sum(int(p.shape[0]) for p in (self._rows, self._stop_row) if p is not None)

    def row_chunks(self, size: int) -> Iterator[torch.Tensor]:
        """The rows in order, `size` at a time (views: nothing is copied here)."""
        for part in (self._rows, self._stop_row):
            if part is not None:
                yield from part.split(size)

    def steps(self, ids: list[int], top_k: int) -> StepScores | None:
        """TurboMind's rows scored CHUNK_ROWS at a time (on a GPU if any); None when they do not match."""
        if self.n_rows() != len(ids):
            return None if ids else empty_scores(top_k)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        chunks = (c.to(device) for c in self.row_chunks(CHUNK_ROWS))
        return score_chunks(chunks, torch.tensor(ids), top_k)
