"""Service.stream and the runners on a scripted engine: streaming, Stop, batching, faults, bounds.

The scripted engine (tests/scripted_engine.py) has fixed logits per step and knobs to hold a
batch or release its steps one by one, so none of these tests depends on timing luck.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from scripted_engine import END, ScriptedEngine, ids_of

from greedyscore.detokenize import MAX_PENDING, WINDOW
from greedyscore.errors import BadInput, Busy, ModelFailed
from greedyscore.requests import Fork
from greedyscore.service import Service, guess_ids
from greedyscore.types import Message, ScoredReply, Settings, TextDelta
from greedyscore.variants import SYSTEM, Variants, compare_text

REPLIES = {
    "hi": "Hello there!",
    "zh": "你好，世界 🌍 ok",
    "long": "one two three four five six seven eight nine ten " * 3,
    "a": "alpha",
    "b": "bravo",
    "c": "charlie",
    "poison": "never",
}


def user(text: str) -> list[Message]:
    return [Message("user", text)]


def drain(stream) -> tuple[list[TextDelta], ScoredReply]:
    events = list(stream)
    assert isinstance(events[-1], ScoredReply) and all(isinstance(e, TextDelta) for e in events[:-1])
    return events[:-1], events[-1]


def expected_prob() -> float:
    """The scripted logits (5.0 for the token, 4.0 for one other, 0.0 for 256) as a brute-force softmax."""
    z = math.exp(5.0) + math.exp(4.0) + 256 * math.exp(0.0)
    return math.exp(5.0) / z


@pytest.mark.parametrize("key", ["hi", "zh", "long"])
def test_stream_deltas_join_to_the_reply_and_characters_arrive_whole(key):
    service = Service(ScriptedEngine(REPLIES))
    deltas, reply = drain(service.stream(user(key), Settings(max_new_tokens=200, top_k=3), heartbeat_s=5))
    assert reply.text == REPLIES[key]
    assert "".join(d.delta for d in deltas) == reply.text  # special tokens never streamed
    assert all("\ufffd" not in d.delta and d.delta for d in deltas)
    assert [d.text for d in deltas] == ["".join(x.delta for x in deltas[: i + 1]) for i in range(len(deltas))]
    assert [t.id for t in reply.tokens] == ids_of(REPLIES[key]) + [END]
    assert reply.finish_reason == "stop" and reply.tokens[-1].special
    assert all(abs(t.prob - expected_prob()) < 1e-6 and t.rank == 1 for t in reply.tokens)
    assert service.chat(user(key), Settings(max_new_tokens=200, top_k=3)).tokens == reply.tokens


def test_stream_decodes_only_a_window_per_step():
    """Incremental detokenisation: while streaming, no decode call sees more than a short window."""
    engine = ScriptedEngine(REPLIES)
    sizes: list[int] = []
    plain_decode = engine.tokenizer.decode
    engine.tokenizer.decode = lambda ids: (sizes.append(len(ids)), plain_decode(ids))[1]
    stream = Service(engine).stream(user("long"), Settings(max_new_tokens=300), heartbeat_s=5)
    first = next(stream)
    assert isinstance(first, TextDelta)
    events = [first]
    while not isinstance(events[-1], ScoredReply):
        events.append(next(stream))
        if isinstance(events[-1], TextDelta):
            streamed = list(sizes)
    reply = events[-1]
    assert len(reply.tokens) > 100
    assert max(streamed) <= WINDOW + 2 * MAX_PENDING + 1, max(streamed)


def test_validation_happens_before_anything_runs():
    engine = ScriptedEngine(REPLIES)
    service = Service(engine)
    with pytest.raises(BadInput, match="empty prompt"):
        service.stream(user("  "), Settings())
    with pytest.raises(BadInput, match="max_new_tokens"):
        service.stream(user("hi"), Settings(max_new_tokens=True))
    assert engine.batches == []


@pytest.mark.parametrize("bad", [True, 0, -1, 2.5, "12", None])
def test_settings_reject_bools_and_non_integers(bad):
    from greedyscore.requests import check_settings, parse_settings

    with pytest.raises(BadInput, match="max_new_tokens"):
        check_settings(Settings(max_new_tokens=bad))
    with pytest.raises(BadInput, match="max_new_tokens"):
        parse_settings(bad, 5)
    with pytest.raises(BadInput, match="top_k"):
        parse_settings(8, bad if bad is not None else "x")
    with pytest.raises(BadInput, match="verify"):
        parse_settings(8, 5, "yes")
    assert parse_settings(8.0, 5.0, True) == Settings(max_new_tokens=8, top_k=5, verify=True)


def test_cancel_ends_the_reply_at_its_last_real_token():
    engine = ScriptedEngine(REPLIES)
    engine.permits = threading.Semaphore(0)
    cancel = threading.Event()
    stream = Service(engine).stream(user("long"), Settings(max_new_tokens=200), cancel=cancel, heartbeat_s=0.05)
    engine.permits.release(5)  # five steps, then the engine waits
    text = ""
    for event in stream:
        if isinstance(event, TextDelta):
            text = event.text
            if len(text) == 5:
                break
    cancel.set()
    engine.permits.release(1000)
    reply = next(e for e in stream if isinstance(e, ScoredReply))
    assert reply.finish_reason == "abort"
    assert [t.id for t in reply.tokens] == ids_of(REPLIES["long"])[:5]  # no end token, no padding
    assert reply.text == REPLIES["long"][:5] == text
    assert not reply.verified


def test_a_reply_that_ended_before_the_cancel_is_not_an_abort():
    engine = ScriptedEngine(REPLIES)
    cancel = threading.Event()
    reply = Service(engine).chat(user("hi"), Settings(max_new_tokens=200), cancel=cancel)
    cancel.set()
    assert reply.finish_reason == "stop"
    reply = Service(engine).chat(user("long"), Settings(max_new_tokens=4))
    assert reply.finish_reason == "length" and len(reply.tokens) == 4


def test_closing_the_stream_stops_the_generation():
    """What the UI's Stop does: close the iterator; the engine's row sees its cancel event."""
    engine = ScriptedEngine(REPLIES)
    engine.permits = threading.Semaphore(3)
    service = Service(engine)
    stream = service.stream(user("long"), Settings(max_new_tokens=200), heartbeat_s=0.05)
    got = [next(stream) for _ in range(3)]
    assert [g.delta for g in got] == list(REPLIES["long"][:3])
    stream.close()
    engine.permits.release(1000)
    # the worker is free again at once: the next turn is answered in full
    assert service.chat(user("hi"), Settings(max_new_tokens=50)).text == REPLIES["hi"]
    assert [b for b in engine.batches if "long" in b] == [["long"]] * 4  # 3 tokens, then the step that saw Stop


def test_heartbeats_while_waiting_let_a_consumer_stop():
    engine = ScriptedEngine(REPLIES)
    engine.hold.clear()
    stream = Service(engine).stream(user("hi"), Settings(max_new_tokens=50), heartbeat_s=0.02)
    beats = [next(stream) for _ in range(3)]
    assert all(isinstance(b, TextDelta) and b.delta == "" and b.text == "" for b in beats)
    stream.close()
    engine.hold.set()


def test_requests_that_arrive_together_are_one_batch():
    engine = ScriptedEngine(REPLIES)
    service = Service(engine, max_batch=8)
    gate = threading.Event()
    blocker = threading.Thread(target=service.runner.call, args=(gate.wait, 30))
    blocker.start()  # the worker is busy: the next three requests queue up
    streams = [service.stream(user(k), Settings(max_new_tokens=50), heartbeat_s=5) for k in "abc"]
    firsts = [None] * 3

    def first_event(i: int) -> None:
        firsts[i] = next(streams[i])

    threads = [threading.Thread(target=first_event, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    while service.runner._queue.qsize() < 3:
        threading.Event().wait(0.01)
    gate.set()
    for t in threads:
        t.join(10)
    replies = [drain(iter([first, *stream]))[1] for first, stream in zip(firsts, streams)]
    assert [r.text for r in replies] == [REPLIES[k] for k in "abc"]
    assert sorted(engine.batches[0]) == ["a", "b", "c"]  # they joined before the first step
    assert service.runner.batch_sizes[-1] == 3


def test_a_failing_request_fails_alone_and_the_service_keeps_serving():
    engine = ScriptedEngine(REPLIES)
    engine.fail_on = {"poison"}
    service = Service(engine, max_batch=8)
    gate = threading.Event()
    blocker = threading.Thread(target=service.runner.call, args=(gate.wait, 30))
    blocker.start()

    def run(key: str):
        try:
            return service.chat(user(key), Settings(max_new_tokens=50))
        except ModelFailed as ex:
            return ex

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(run, k) for k in ["a", "poison", "b", "c"]]
        while service.runner._queue.qsize() < 4:
            threading.Event().wait(0.01)
        gate.set()
        results = [f.result(30) for f in futures]
    assert isinstance(results[1], ModelFailed) and "injected failure" in str(results[1])
    assert [r.text for i, r in enumerate(results) if i != 1] == [REPLIES[k] for k in "abc"]
    assert sorted(engine.batches[0]) == ["a", "b", "c"]  # the poisoned one failed at its join; the rest ran together
    assert service.chat(user("hi"), Settings(max_new_tokens=50)).text == REPLIES["hi"]


@pytest.mark.parametrize("concurrent", [False, True])
def test_bounded_queue_says_busy(concurrent):
    """max_batch running, max_pending waiting, then Busy: the same for both runners."""
    engine = ScriptedEngine(REPLIES, concurrent=concurrent)
    engine.hold.clear()
    service = Service(engine, max_batch=1, max_pending=2)
    streams = [service.stream(user("hi"), Settings(max_new_tokens=50), heartbeat_s=0.02) for _ in range(4)]
    next(streams[0])
    while len(engine.batches) < 1:  # running, held in the engine
        threading.Event().wait(0.01)
    next(streams[1])  # waiting
    next(streams[2])  # waiting
    with pytest.raises(Busy, match="busy"):
        next(streams[3])
    engine.hold.set()
    for s in streams[:3]:
        assert drain(s)[1].text == REPLIES["hi"]
    assert service.chat(user("hi"), Settings(max_new_tokens=50)).text == REPLIES["hi"]


def test_concurrent_engine_runs_requests_side_by_side():
    """An engine that batches by itself (LMDeploy) gets up to max_batch requests at once."""
    engine = ScriptedEngine(REPLIES, concurrent=True)
    engine.hold.clear()
    service = Service(engine, max_batch=3, max_pending=8)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(service.chat, user(k), Settings(max_new_tokens=50)) for k in "abc"]
        while len(engine.batches) < 3:  # all three inside the engine at the same time
            threading.Event().wait(0.01)
        engine.hold.set()
        assert [f.result(10).text for f in futures] == [REPLIES[k] for k in "abc"]
    assert all(len(b) == 1 for b in engine.batches) and max(service.runner.batch_sizes) == 3


def test_verification_and_engine_logprob_notes():
    engine = ScriptedEngine(REPLIES)
    reply = Service(engine).chat(user("hi"), Settings(max_new_tokens=50, verify=True))
    assert reply.verified and not any(t.near_tie for t in reply.tokens)
    assert all(t.rescored_prob == pytest.approx(t.prob) for t in reply.tokens)
    assert reply.score_source == engine.info.score_source


def test_compare_engine_logprobs_is_pure_scoring_maths():
    from greedyscore.scoring import compare_engine_logprobs, score_rows

    steps = score_rows(torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]]), torch.tensor([2, 0]), 2)
    lps = steps.logprob.tolist()
    assert compare_engine_logprobs([{2: lps[0], 1: -1.4}, {0: lps[1]}], [2, 0], steps, 1e-4) == []
    injected = [{2: lps[0]}, {0: math.log(math.exp(lps[1]) - 0.01)}]
    notes = compare_engine_logprobs(injected, [2, 0], steps, 1e-3)
    assert len(notes) == 1 and notes[0].startswith("token 1 (id 0)")
    assert compare_engine_logprobs(injected, [2, 0], steps, 0.02) == []
    missing = compare_engine_logprobs([{1: -0.5}], [2, 0], steps, 1e-3)
    assert len(missing) == 2 and all("no logprob" in n for n in missing)
    with pytest.raises(ValueError):
        compare_engine_logprobs([{2: 0.0}], [2], steps, 1e-3)


def test_app_flags_size_the_shared_engine():
    """--concurrency is the batch size and --max-queue the shared engine's own bound."""
    import app

    engine = ScriptedEngine(REPLIES)
    engine.hold.clear()
    service = app.make_service(engine, app.parse_args(["--concurrency", "2", "--max-queue", "3"]))
    assert (service.runner.max_batch, service.runner.max_pending) == (2, 3)
    streams = [service.stream(user("hi"), Settings(max_new_tokens=50), heartbeat_s=0.02) for _ in range(5)]
    next(streams[0])  # the worker takes this one into its batch and is held there
    while len(engine.batches) < 1:
        threading.Event().wait(0.01)
    for s in streams[1:4]:
        next(s)  # three wait in the bounded queue
    with pytest.raises(Busy):
        next(streams[4])
    engine.hold.set()
    for s in streams[:4]:
        assert drain(s)[1].text == REPLIES["hi"]


@pytest.mark.parametrize("concurrent", [False, True])
def test_follow_up_work_of_an_accepted_request_is_never_busy(concurrent):
    """A reply already generated must not be lost because new requests filled the queue: its
    rescoring/verification goes in as follow-up work, which is never refused."""
    engine = ScriptedEngine(REPLIES, concurrent=concurrent)
    engine.hold.clear()
    service = Service(engine, max_batch=1, max_pending=1)
    streams = [service.stream(user("hi"), Settings(max_new_tokens=50), heartbeat_s=0.02) for _ in range(3)]
    next(streams[0])
    while len(engine.batches) < 1:  # one running (held), then one waiting: the bound is reached
        threading.Event().wait(0.01)
    next(streams[1])
    with pytest.raises(Busy):
        next(streams[2])
    done = []
    worker = threading.Thread(target=lambda: done.append(service.runner.follow_up(lambda: 42)))
    worker.start()
    with pytest.raises(Busy):
        service.runner.call(lambda: 0)
    engine.hold.set()
    worker.join(10)
    assert done == [42]
    assert drain(streams[0])[1].text == REPLIES["hi"] and drain(streams[1])[1].text == REPLIES["hi"]


SURROGATE_PLACES = {  # every way text reaches the model's tokenizer, each with a lone surrogate (U+D800-U+DFFF)
    "a chat message": lambda s: s.chat([Message("user", "a\ud800b")]),
    "a role": lambda s: s.chat([Message("us\udc00er", "hi")]),
    "a system prompt": lambda s: s.stream([Message("system", "\ud83d"), Message("user", "hi")], Settings()),
    "an earlier turn": lambda s: s.chat([Message("user", "hi"), Message("assistant", "x\udfff"),
                                         Message("user", "and?")]),
    "a fork's messages": lambda s: s.run(Fork((Message("user", "\udbff!"),), [1, 2], 1, 3)),
    "a scored text": lambda s: s.score_text("x\ud800"),
    "a scored text's prompt": lambda s: s.score_text("hi", prompt="\ud800"),
    "a reply scored after messages": lambda s: s.score_text("ok \udc80", messages=[Message("user", "hi")]),
    "a scored conversation": lambda s: s.score_messages([Message("user", "\ud800")]),
    "a guess": lambda s: guess_ids(s, "\ude00"),
    "a compared text": lambda s: compare_text(Variants(s), "x\ud800", SYSTEM, "", "a", "b"),
}


@pytest.mark.parametrize("place", SURROGATE_PLACES)
def test_a_lone_surrogate_is_refused_where_text_enters_and_the_service_keeps_serving(service, place):
    """The real tokenizer raises a bare TypeError on these; the service names the input instead."""
    with pytest.raises(BadInput, match=r"lone surrogate \(U\+D[89A-F][0-9A-F]{2} at character \d+\), which is not "
                                       r"text: send it as UTF-8 text"):
        result = SURROGATE_PLACES[place](service)
        if not isinstance(result, ScoredReply):
            drain(result)
    assert service.chat(user("Say OK."), Settings(max_new_tokens=2)).tokens  # still serving
