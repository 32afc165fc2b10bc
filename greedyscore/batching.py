"""One worker thread owns a batching engine: requests that arrive together run as one batch.

Why a thread and not a lock: with a lock, 8 visitors wait for 8 generations one after the
other; here their prompts go into one left-padded `generate`, which on a 2-core CPU gives ~5x
the aggregate tokens/s. Other model work (rescoring, teacher forcing) runs between batches on
the same thread, so the model is never used by two threads at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .engines.base import Generation
from .errors import Busy

log = logging.getLogger("greedyscore")


class BatchEngine(Protocol):
    def generate_batch(self, requests: Sequence[Any]) -> list[Generation]: ...


@dataclass
class _Job:
    future: Future
    request: Any = None  # a GenerateRequest: batched with others
    call: Callable[[], Any] | None = None  # any other model work: run alone


class Batcher:
    """Bounded queue + worker. `generate` and `call` block the caller until their job is done."""

    def __init__(
        self, engine: BatchEngine, max_batch: int = 16, max_pending: int = 64, window_s: float = 0.02,
        regroup_s: float = 0.15,
    ):
        self.engine = engine
        self.max_batch = max_batch
        self.window_s = window_s  # wait this long for company before starting a batch
        # After a batch of n, its users come back one by one (each scores and renders its reply
        # first): wait up to regroup_s for n of them, so a steady crowd keeps batching as one.
        self.regroup_s = regroup_s
        self._last_batch = 1
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=max_pending)
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # the latest batches, for tests and benchmarks
        self._thread = threading.Thread(target=self._run, daemon=True, name="greedyscore-batcher")
        self._thread.start()

    def generate(self, request: Any) -> Generation:
        return self._submit(_Job(Future(), request=request)).result()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._submit(_Job(Future(), call=lambda: fn(*args, **kwargs))).result()

    def _submit(self, job: _Job) -> Future:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Busy("the server is busy: try again in a moment") from None
        return job.future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first.call is not None:
                self._run_call(first)
                continue
            batch, later = [first], []
            expect = self._last_batch
            deadline = time.perf_counter() + (self.regroup_s if expect > 1 else self.window_s)
            while len(batch) < self.max_batch:
                if len(batch) >= expect:  # everyone expected is here: only a brief wait for more
                    deadline = min(deadline, time.perf_counter() + self.window_s)
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                (batch if job.call is None else later).append(job)
            self._run_batch(batch)
            for job in later:
                self._run_call(job)

    @staticmethod
    def _run_call(job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.call())
        except BaseException as ex:  # noqa: BLE001 - delivered to the caller, the worker lives on
            job.future.set_exception(ex)

    def _run_batch(self, batch: list[_Job]) -> None:
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        for j in list(live):
            cancel = getattr(j.request, "cancel", None)
            if cancel is not None and cancel.is_set():  # stopped while waiting: no model time spent
                j.future.set_result(Generation([], "abort"))
                live.remove(j)
        if not live:
            return
        self.batch_sizes.append(len(live))
        self._last_batch = len(live)
        try:
            results = self.engine.generate_batch([j.request for j in live])
        except BaseException as ex:  # noqa: BLE001
            if len(live) == 1:
                live[0].future.set_exception(ex)
                return
            log.warning("batch of %d failed (%s); running its requests one by one", len(live), ex)
            for j in live:  # isolate the failing request: the others still get their replies
                try:  # not streamed again: the text so far would be repeated
                    solo = replace(j.request, on_ids=None)
                    j.future.set_result(self.engine.generate_batch([solo])[0])
                except BaseException as solo_ex:  # noqa: BLE001
                    j.future.set_exception(solo_ex)
            return
        for j, gen in zip(live, results):
            j.future.set_result(gen)
