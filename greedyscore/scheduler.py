"""Where model work runs: one scheduler thread that does continuous batching over a decoder
(`engine.decoder()`: `join` a request, `step` every row by a token, `clear` after a failed step).

Between steps, waiting requests join (up to `max_batch` rows) and other model work runs (`call`), so
the model is never used by two threads at once and a request arriving mid-reply starts at the next
step. Up to `max_pending` requests wait for a row, beyond that `Busy`; `follow_up` (an accepted
request's rescoring) is never refused, so a generated reply is not lost.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any

from .engines.base import Decoder, GenerateRequest, Generation
from .errors import Busy

BUSY = "the server is busy: try again in a moment"
CLOSED = "this Service is closed: its model work has ended"


@dataclass
class _Job:
    future: Future
    request: GenerateRequest | None = None  # a generation: joins the decoder
    call: Callable[[], Any] | None = None  # other model work: runs between steps
    counted: bool = False  # holds one of the max_pending places until it starts
    stop: bool = False  # `close`: the loop ends once the work before it is done


class Scheduler:
    """A bounded queue and one thread that joins, steps and runs calls over one decoder; inline_calls
    False (an engine that takes concurrent calls): `call` runs on the caller's thread, bounded alike."""

    def __init__(self, decoder: Decoder, max_batch: int = 16, max_pending: int = 64, inline_calls: bool = True):
        self.decoder = decoder
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.inline_calls = inline_calls
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # rows in the decoder after each join
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._waiting: deque[_Job] = deque()  # taken from the queue, no row free yet (the loop's own)
        self._pending = 0  # accepted jobs not started yet
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="greedyscore-scheduler")
        self._thread.start()

    # --- the callers' side ------------------------------------------------------------------------
    def submit(self, request: GenerateRequest) -> Future:
        """Queue a generation; its Future resolves with the Generation when its row leaves."""
        return self._accept(_Job(Future(), request=request), counted=True)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Model work, where this engine takes it; block until done. Busy when the queue is full."""
        job = self._accept(_Job(Future(), call=partial(fn, *args, **kwargs)), counted=True, run=not self.inline_calls)
        return job.result()

    def follow_up(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`call` for an accepted request's further work: never refused as busy."""
        return self._accept(_Job(Future(), call=partial(fn, *args, **kwargs)), run=not self.inline_calls).result()

    def close(self, timeout_s: float | None = None) -> None:
        """Finish the accepted work, then end the thread (a process exiting inside torch is aborted by C++)."""
        with self._lock:
            self._closed = True
        if self._thread.is_alive():
            self._queue.put(_Job(Future(), stop=True))
            self._thread.join(timeout_s)
        if not self._thread.is_alive():  # anything that slipped in behind the stop: refused, not left hanging
            for job in self._drain_all():
                if not job.stop and job.future.set_running_or_notify_cancel():
                    job.future.set_exception(RuntimeError(CLOSED))
        self.decoder.close()

    def _accept(self, job: _Job, counted: bool = False, run: bool = False) -> Future:
        with self._lock:
            if self._closed:
                raise RuntimeError(CLOSED)
            if counted and self._pending >= self.max_pending:
                raise Busy(BUSY)
            self._pending += counted
        job.counted = counted
        if run:  # on this thread: the engine takes concurrent calls
            self._run_call(job)
        else:
            self._queue.put(job)
        return job.future

    def _started(self, job: _Job) -> None:
        if job.counted:
            with self._lock:
                self._pending -= 1
            job.counted = False

    # --- the scheduler's thread -------------------------------------------------------------------
    def _run(self) -> None:
        closing = False
        while not (closing and not len(self.decoder) and not self._waiting):
            idle = not len(self.decoder) and not self._waiting
            closing = self._take_new(block=idle and not closing) or closing
            self._join_waiting()
            if len(self.decoder):
                self._step()

    def _take_new(self, block: bool) -> bool:
        """Everything that arrived: calls run now, generations wait for a row. -> saw `close`."""
        closing = False
        while True:
            try:
                job = self._queue.get(block=block)
            except queue.Empty:
                return closing
            block = False
            if job.stop:
                closing = True
            elif job.call is not None:
                self._run_call(job)
            else:
                self._waiting.append(job)

    def _join_waiting(self) -> None:
        while self._waiting and len(self.decoder) < self.max_batch:
            job = self._waiting.popleft()
            self._started(job)
            if not self._starts(job):
                continue
            try:
                self.decoder.join(job.request, job)
            except BaseException as ex:  # noqa: BLE001 - its own prefill failed: only it fails
                job.future.set_exception(ex)
                continue
            self.batch_sizes.append(len(self.decoder))

    def _step(self) -> None:
        try:
            finished = self.decoder.step()
        except BaseException as ex:  # noqa: BLE001 - the step's forward failed: every row fails
            for job in self.decoder.clear():
                job.future.set_exception(ex)
            return
        for job, outcome in finished:
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    @staticmethod
    def _starts(job: _Job) -> bool:
        """A waiting generation may start: not cancelled, nor stopped while it waited (then: "abort")."""
        if not job.future.set_running_or_notify_cancel():
            return False
        cancel = job.request.cancel
        if cancel is not None and cancel.is_set():
            job.future.set_result(Generation((), "abort"))
            return False
        return True

    def _run_call(self, job: _Job) -> None:
        self._started(job)
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.call())
        except BaseException as ex:  # noqa: BLE001 - delivered to the caller, the thread lives on
            job.future.set_exception(ex)

    def _drain_all(self) -> list[_Job]:
        jobs = list(self._waiting)
        self._waiting.clear()
        while True:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                return jobs
