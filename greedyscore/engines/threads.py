"""The decoder face of an engine that batches by itself (LMDeploy's async engine, a remote server): a
row is one `generate_batch([request])` call in flight on a pool thread; `step` waits only briefly for
one to end, so the scheduler's loop stays free to join new requests and run other work."""

from __future__ import annotations

import queue
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .base import GenerateRequest, Generation

POLL_S = 0.005  # how long a step waits for a call to end before the loop looks for new requests


class EngineThreads:
    """Up to `max_rows` generation calls at once, each on a pool thread."""

    def __init__(self, generate_batch: Callable[[Sequence[GenerateRequest]], list[Generation]], max_rows: int,
                 poll_s: float = POLL_S) -> None:
        self.generate_batch = generate_batch
        self.poll_s = poll_s
        self._pool = ThreadPoolExecutor(max_rows, thread_name_prefix="greedyscore-engine")
        self._ended: queue.SimpleQueue[tuple[Any, Future]] = queue.SimpleQueue()
        self._rows = 0

    def __len__(self) -> int:
        return self._rows

    def join(self, request: GenerateRequest, tag: Any) -> None:
        future = self._pool.submit(lambda: self.generate_batch([request])[0])
        self._rows += 1
        future.add_done_callback(lambda f: self._ended.put((tag, f)))

    def step(self) -> list[tuple[Any, Generation | BaseException]]:
        ended = []
        try:
            ended.append(self._ended.get(timeout=self.poll_s))
            while True:
                ended.append(self._ended.get_nowait())
        except queue.Empty:
            pass
        self._rows -= len(ended)
        return [(tag, f.exception() or f.result()) for tag, f in ended]

    def clear(self) -> list[Any]:
        return []  # a step never fails as a whole here: each call ends on its own

    def close(self) -> None:
        self._pool.shutdown(wait=True)
