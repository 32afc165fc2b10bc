"""The one scheduler on the scripted decoder: order, Stop, calls between steps, faults, close. Every
test steers the decoder with permits or the hold event: no sleeps, no arrival windows."""

from __future__ import annotations

import threading

import pytest
from scripted_engine import END, ScriptedEngine, ids_of

from greedyscore.engines.base import GenerateRequest
from greedyscore.errors import Busy
from greedyscore.scheduler import CLOSED, Scheduler
from greedyscore.types import Message

REPLIES = {"a": "one", "b": "two", "c": "three", "long": "x" * 40}


def request(engine: ScriptedEngine, key: str, max_new: int = 50, cancel: threading.Event | None = None,
            seen: list | None = None) -> GenerateRequest:
    prompt = engine.tokenizer.prompt_ids([Message("user", key)])
    return GenerateRequest(tuple(prompt), max_new, 2, seen.extend if seen is not None else None, cancel)


def wait_for(condition) -> None:
    """Until the scheduler's thread has got somewhere (it runs on its own; nothing here is timed)."""
    for _ in range(3000):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("the scheduler never got there")


def test_waiting_requests_join_in_arrival_order_as_rows_free():
    engine = ScriptedEngine(REPLIES)
    engine.hold.clear()
    scheduler = Scheduler(engine.decoder(), max_batch=1)
    futures = [scheduler.submit(request(engine, k)) for k in "abc"]
    wait_for(lambda: engine.batches)
    engine.hold.set()
    gens = [f.result(10) for f in futures]
    assert [g.token_ids for g in gens] == [(*ids_of(REPLIES[k]), END) for k in "abc"]
    firsts = [next(i for i, b in enumerate(engine.batches) if k in b) for k in "abc"]
    assert firsts == sorted(firsts) and all(len(b) == 1 for b in engine.batches)  # one row at a time, in order
    scheduler.close()


def test_a_request_stopped_while_it_waits_ends_without_model_time():
    engine = ScriptedEngine(REPLIES)
    engine.hold.clear()
    scheduler = Scheduler(engine.decoder(), max_batch=1)
    running = scheduler.submit(request(engine, "a"))
    cancel = threading.Event()
    waiting = scheduler.submit(request(engine, "b", cancel=cancel))
    wait_for(lambda: engine.batches)
    cancel.set()
    engine.hold.set()
    assert waiting.result(10).token_ids == () and waiting.result().finish_reason == "abort"
    assert running.result(10).finish_reason == "stop"
    assert not any("b" in b for b in engine.batches)
    scheduler.close()


def test_other_model_work_runs_between_steps_of_a_running_reply():
    engine = ScriptedEngine(REPLIES)
    engine.permits = threading.Semaphore(2)
    scheduler = Scheduler(engine.decoder())
    seen: list[int] = []
    future = scheduler.submit(request(engine, "long", seen=seen))
    wait_for(lambda: len(seen) == 2)  # two steps taken, the third waits for a permit
    called = threading.Thread(target=lambda: seen.append(scheduler.call(lambda: -1)))
    called.start()
    wait_for(lambda: scheduler._queue.qsize() == 1)  # queued while the third step waits
    engine.permits.release(1)  # one more step; then the call runs before the next one
    called.join(10)
    assert seen[:3] == ids_of("xxx") and seen[3] == -1 and not future.done()
    engine.permits.release(1000)
    assert future.result(10).token_ids == (*ids_of(REPLIES["long"]), END)
    scheduler.close()


class FailingStep:
    """A decoder whose next step raises once: every row in it fails, the scheduler serves on."""

    def __init__(self, decoder) -> None:
        self.decoder, self.fail = decoder, threading.Event()

    def __getattr__(self, name):
        return getattr(self.decoder, name)

    def __len__(self) -> int:
        return len(self.decoder)

    def step(self):
        if self.fail.is_set():
            self.fail.clear()
            raise RuntimeError("the forward failed")
        return self.decoder.step()


def test_a_failed_step_fails_its_rows_and_the_scheduler_serves_on():
    engine = ScriptedEngine(REPLIES)
    engine.hold.clear()
    decoder = FailingStep(engine.decoder())
    scheduler = Scheduler(decoder, max_batch=4)
    doomed = [scheduler.submit(request(engine, k)) for k in "ab"]
    wait_for(lambda: engine.batches)
    decoder.fail.set()
    engine.hold.set()
    errors = [f.exception(10) for f in doomed]
    assert errors[0] is not None or errors[1] is not None  # the step that failed held at least one of them
    assert all(e is None or "the forward failed" in str(e) for e in errors)
    assert scheduler.submit(request(engine, "c")).result(10).token_ids == (*ids_of("three"), END)
    assert len(decoder) == 0
    scheduler.close()


def test_close_finishes_accepted_work_then_refuses():
    engine = ScriptedEngine(REPLIES)
    engine.hold.clear()
    scheduler = Scheduler(engine.decoder(), max_batch=1)
    futures = [scheduler.submit(request(engine, k)) for k in "ab"]
    closer = threading.Thread(target=scheduler.close)
    closer.start()
    engine.hold.set()
    closer.join(10)
    assert [f.result(0).finish_reason for f in futures] == ["stop", "stop"]
    with pytest.raises(RuntimeError, match=CLOSED):
        scheduler.submit(request(engine, "c"))


@pytest.mark.parametrize("concurrent", [False, True])
def test_the_bound_counts_every_accepted_request_that_has_not_started(concurrent):
    """Waiting for a row counts against max_pending whether it is still queued or taken by the loop."""
    engine = ScriptedEngine(REPLIES, concurrent=concurrent)
    engine.hold.clear()
    scheduler = Scheduler(engine.decoder(1), max_batch=1, max_pending=2, inline_calls=not concurrent)
    futures = [scheduler.submit(request(engine, "a"))]
    wait_for(lambda: engine.batches)
    futures += [scheduler.submit(request(engine, k)) for k in "bc"]
    with pytest.raises(Busy):
        scheduler.submit(request(engine, "long"))
    with pytest.raises(Busy):
        scheduler.call(lambda: 0)
    engine.hold.set()
    assert [f.result(10).finish_reason for f in futures] == ["stop"] * 3
    assert scheduler.call(lambda: 1) == 1
    scheduler.close()
