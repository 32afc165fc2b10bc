"""Where model work runs: one worker thread that batches (transformers), or a bounded pool of
concurrent calls into an engine that batches by itself (LMDeploy's async engine).

Why a worker and not a lock: with a lock, 8 visitors wait for 8 generations one after the
other; here their prompts go into one left-padded `generate`, which on a 2-core CPU gives ~4-5x
the aggregate tokens/s. Other model work (rescoring, teacher forcing) runs between batches on
the same thread, so the model is never used by two threads at once.

Both runners have the same face: `submit(request) -> Future[Generation]` and a blocking
`call(fn, ...)`; both run up to `max_batch` requests at once and hold up to `max_pending`
waiting ones; beyond that, `Busy`. `follow_up(fn, ...)` is model work of a request already
accepted (rescoring its reply): it is never refused, so a reply once generated is not lost.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .engines.base import GenerateRequest, Generation
from .errors import Busy

log = logging.getLogger("greedyscore")
BUSY = "the server is busy: try again in a moment"
CLOSED = "this Service is closed: its model work has ended"


class BatchEngine(Protocol):
    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[Generation]: ...


class Runner(Protocol):
    max_batch: int
    max_pending: int
    batch_sizes: deque[int]

    def submit(self, request: GenerateRequest) -> Future: ...

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...

    def follow_up(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...

    def close(self) -> None: ...


def make_runner(engine: Any, max_batch: int, max_pending: int) -> Runner:
    """The runner an engine asks for: `engine.info.concurrent` -> Concurrent, else a batching worker."""
    if engine.info.concurrent:
        return Concurrent(engine, max_batch, max_pending)
    return Batcher(engine, max_batch, max_pending)


@dataclass
class _Job:
    future: Future
    request: GenerateRequest | None = None  # a generation: batched with others
    call: Callable[[], Any] | None = None  # any other model work: run alone
    counted: bool = False  # holds one of the max_pending places until the worker takes it
    stop: bool = False  # `close`: the worker ends once the work before it is done


class Batcher:
    """Bounded queue + one worker thread; requests that arrive together generate as one batch."""

    def __init__(
        self, engine: BatchEngine, max_batch: int = 16, max_pending: int = 64, window_s: float = 0.02,
        regroup_s: float = 0.15,
    ):
        self.engine = engine
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.window_s = window_s  # wait this long for company before starting a batch
        # After a batch of n, its users come back one by one (each scores and renders its reply
        # first): wait up to regroup_s for n of them, so a steady crowd keeps batching as one.
        self.regroup_s = regroup_s
        self._last_batch = 1
        self._queue: queue.Queue[_Job] = queue.Queue()  # bounded by hand: follow-ups are never refused
        self._waiting = 0  # counted jobs in the queue
        self._lock = threading.Lock()
        self._closed = False
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # the latest batches, for tests and benchmarks
        self._thread = threading.Thread(target=self._run, daemon=True, name="greedyscore-batcher")
        self._thread.start()

    def submit(self, request: GenerateRequest) -> Future:
        """Queue a generation; its Future resolves when its batch is done."""
        return self._put(_Job(Future(), request=request))

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run fn on the worker, between batches; block until it is done."""
        return self._put(_Job(Future(), call=lambda: fn(*args, **kwargs))).result()

    def follow_up(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`call` for an accepted request's further work: never refused as busy."""
        job = _Job(Future(), call=lambda: fn(*args, **kwargs))
        with self._lock:
            if self._closed:
                raise RuntimeError(CLOSED)
            self._queue.put(job)
        return job.future.result()

    def close(self, timeout_s: float | None = None) -> None:
        """Finish the work already queued, then end the worker thread and wait for it. A process
        must not exit while the worker is inside torch or the C kernel (still starting, say):
        C++ then aborts it ("terminate called without an active exception")."""
        with self._lock:
            self._closed = True
        if self._thread.is_alive():
            self._queue.put(_Job(Future(), stop=True))
            self._thread.join(timeout_s)
        if not self._thread.is_alive():  # anything that slipped in behind the stop: refused, not left hanging
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if not job.stop and job.future.set_running_or_notify_cancel():
                    job.future.set_exception(RuntimeError(CLOSED))

    def _put(self, job: _Job) -> Future:
        with self._lock:
            if self._closed:
                raise RuntimeError(CLOSED)
            if self._waiting >= self.max_pending:
                raise Busy(BUSY)
            self._waiting += 1
        job.counted = True
        self._queue.put(job)
        return job.future

    def _take(self, timeout: float | None = None) -> _Job:
        job = self._queue.get(timeout=timeout)
        if job.counted:
            with self._lock:
                self._waiting -= 1
        return job

    def _run(self) -> None:
        if hasattr(self.engine, "decoder"):
            return self._run_continuous(self.engine.decoder())
        while True:
            first = self._take()
            if first.stop:
                return
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
                    job = self._take(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                (batch if job.call is None and not job.stop else later).append(job)
            self._run_batch(batch)
            for job in later:
                if job.stop:
                    return
                self._run_call(job)

    def _run_continuous(self, batch: Any) -> None:
        """Continuous batching over an engine's own decode loop (`engine.decoder()`): before every
        step, waiting requests join (up to max_batch rows) and other model work runs; a row that
        finishes or is stopped leaves at once. Returns after `close`, once its work is done."""
        waiting: deque[_Job] = deque()  # requests beyond max_batch rows
        closing = False
        while True:
            if closing and not len(batch) and not waiting:
                return
            try:
                while not closing:  # everything that arrived; block only when there is nothing to do
                    job = self._take(timeout=None if not len(batch) and not waiting else 0)
                    if job.stop:
                        closing = True
                    elif job.call is not None:
                        self._run_call(job)
                    else:
                        waiting.append(job)
            except queue.Empty:
                pass
            while waiting and len(batch) < self.max_batch:
                job = waiting.popleft()
                if not self._starts(job):
                    continue
                try:
                    batch.join(job.request, tag=job)
                except BaseException as ex:  # noqa: BLE001 - its own prefill failed: only it fails
                    job.future.set_exception(ex)
                    continue
                self.batch_sizes.append(len(batch))
            if not len(batch):
                continue
            try:
                finished = batch.step()
            except BaseException as ex:  # noqa: BLE001 - the step's forward failed: every row fails
                for job in batch.clear():
                    job.future.set_exception(ex)
                continue
            for job, gen in finished:
                job.future.set_result(gen)

    @staticmethod
    def _starts(job: _Job) -> bool:
        """A waiting generation may start: not cancelled, and not stopped while it waited (then it
        ends as "abort" before any model time is spent)."""
        if not job.future.set_running_or_notify_cancel():
            return False
        cancel = job.request.cancel
        if cancel is not None and cancel.is_set():
            job.future.set_result(Generation((), "abort"))
            return False
        return True

    @staticmethod
    def _run_call(job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.call())
        except BaseException as ex:  # noqa: BLE001 - delivered to the caller, the worker lives on
            job.future.set_exception(ex)

    def _run_batch(self, batch: list[_Job]) -> None:
        live = [j for j in batch if self._starts(j)]
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


class Concurrent:
    """For an engine that batches by itself: up to `max_batch` requests in it at once, each from
    a pool thread, and up to `max_pending` more waiting for a thread."""

    def __init__(self, engine: BatchEngine, max_batch: int = 16, max_pending: int = 64) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # requests in the engine when each started
        self._pool = ThreadPoolExecutor(max_batch, thread_name_prefix="greedyscore-engine")
        self._slots = threading.BoundedSemaphore(max_batch + max_pending)
        self._running = 0
        self._lock = threading.Lock()

    def submit(self, request: GenerateRequest) -> Future:
        return self._start(lambda: self.engine.generate_batch([request])[0], count=True)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._start(lambda: fn(*args, **kwargs)).result()

    def follow_up(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """An accepted request's further work (the engine runs concurrent calls): never refused."""
        return fn(*args, **kwargs)

    def close(self) -> None:
        """Let the calls in flight finish, then end the pool's threads."""
        self._pool.shutdown(wait=True)

    def _start(self, fn: Callable[[], Any], count: bool = False) -> Future:
        if not self._slots.acquire(blocking=False):
            raise Busy(BUSY)

        def run() -> Any:
            if count:
                with self._lock:
                    self._running += 1
                    self.batch_sizes.append(self._running)
            try:
                return fn()
            finally:
                if count:
                    with self._lock:
                        self._running -= 1

        future = self._pool.submit(run)
        future.add_done_callback(lambda _: self._slots.release())
        return future
