"""Step mode on the real model: each step's distribution against a brute-force float64 softmax of
the model's own forward, typed texts scored as the token sequences they are, a stepped path
against the fork built the same way."""

from __future__ import annotations

import pytest
import torch
from cases import CONVERSATIONS
from test_sampler import reference

from greedyscore.errors import BadInput, InputTooLong
from greedyscore.requests import Step, parse_sampler
from greedyscore.service import last
from greedyscore.steer import finish, step
from greedyscore.types import Sampler, Settings

MESSAGES = CONVERSATIONS["english"]
SETTINGS = Settings(max_new_tokens=12, top_k=5)


def forward(engine, ids: list[int]) -> torch.Tensor:
    """The model's own float64 log-softmax rows over `ids` (one plain forward, no cache, no chunks)."""
    with torch.inference_mode():
        return torch.log_softmax(engine.model(input_ids=torch.tensor([ids])).logits[0].double(), -1)


def test_the_first_step_is_the_models_next_token_distribution(service, engine) -> None:
    s = Sampler(0.7, 0, 0.9)
    out = step(service, Step(MESSAGES, sampler=s, settings=SETTINGS))
    prompt = engine.tokenizer.prompt_ids(MESSAGES)
    lp = forward(engine, prompt)[-1]
    assert out.path.tokens == () and out.path.finish_reason == "step"
    ref = lp.exp()
    assert [e.id for e in out.next.top] == ref.topk(20).indices.tolist()
    assert max(abs(e.raw - ref[e.id].item()) for e in out.next.top) < 2e-4
    assert out.next.entropy == pytest.approx(-(ref * lp).sum().item(), abs=1e-3)
    sampled = reference(lp.float(), s)  # the lens of the same row, by transformers' warpers
    assert out.next.p_greedy == pytest.approx(sampled[out.next.greedy_id].item(), abs=1e-3)
    assert out.next.top[0].text == engine.tokenizer.display(out.next.greedy_id)


def test_greedy_steps_follow_the_greedy_reply(service) -> None:
    reply = service.chat(MESSAGES, SETTINGS)
    prefix: tuple[int, ...] = ()
    for _ in range(3):
        out = step(service, Step(MESSAGES, prefix, settings=SETTINGS))
        prefix = (*prefix, out.next.greedy_id)
    out = step(service, Step(MESSAGES, prefix, settings=SETTINGS))
    assert [t.id for t in out.path.tokens] == [t.id for t in reply.tokens[:3]]
    assert out.path.chosen == ()
    for a, b in zip(out.path.tokens, reply.tokens):
        assert a.prob == pytest.approx(b.prob, abs=2e-4) and a.rank == b.rank == 1


def test_a_typed_text_is_scored_as_the_token_sequence_it_is(service, engine) -> None:
    typed = " Bonjour, mon ami"
    out = step(service, Step(MESSAGES, force_text=typed, settings=SETTINGS))
    ids = engine.tokenizer.text_ids(typed)[1]
    assert len(ids) > 2 and [t.id for t in out.path.tokens] == ids
    assert out.path.text == typed and out.path.chosen == tuple(range(len(ids)))
    prompt = engine.tokenizer.prompt_ids(MESSAGES)
    lp = forward(engine, [*prompt, *ids])
    for i, (t, tid) in enumerate(zip(out.path.tokens, ids)):
        assert t.logprob == pytest.approx(lp[len(prompt) - 1 + i, tid].item(), abs=2e-4)
    assert out.next.greedy_id == int(lp[-1].argmax())


def test_a_stepped_path_equals_the_fork_built_the_same_way(service) -> None:
    original = service.chat(MESSAGES, SETTINGS)
    at, other = 2, original.tokens[2].top[1].id
    fork = service.fork(MESSAGES, [t.id for t in original.tokens], at, other, SETTINGS)
    prefix = tuple(t.id for t in original.tokens[:at])
    out = step(service, Step(MESSAGES, prefix, force_id=other, settings=SETTINGS))
    assert out.path.chosen == (at,)
    done = last(finish(service, Step(MESSAGES, tuple(t.id for t in out.path.tokens), out.path.chosen,
                                     settings=SETTINGS)))
    assert [t.id for t in done.tokens] == [t.id for t in fork.tokens]
    assert max(abs(a.prob - b.prob) for a, b in zip(done.tokens, fork.tokens)) < 2e-4
    assert done.chosen == (at,) and done.to_json()["tokens"][at]["chosen"] is True
    assert done.finish_reason in ("stop", "length")


def test_finishing_from_the_prompt_is_the_greedy_reply(service) -> None:
    reply = service.chat(MESSAGES, SETTINGS)
    done = last(finish(service, Step(MESSAGES, settings=SETTINGS)))
    assert [t.id for t in done.tokens] == [t.id for t in reply.tokens] and done.chosen == ()


def test_a_path_that_ends_on_a_stop_token_has_no_next(service, engine) -> None:
    stop = min(engine.info.stop_ids)
    out = step(service, Step(MESSAGES, force_id=stop, settings=SETTINGS))
    assert out.next is None and out.path.finish_reason == "stop"
    with pytest.raises(BadInput, match="ended"):
        finish(service, Step(MESSAGES, (stop,), settings=SETTINGS))


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(force_id=10**6), "unknown token id"),
    (dict(prefix=(1, -3)), "outside this model's vocabulary"),
    (dict(force_text="hi", force_id=3), "not both"),
    (dict(chosen=(0,)), "chosen positions"),
    (dict(sampler=Sampler(top_p=0.0)), "top_p"),
    (dict(force_text="x" * 2001), "2,000 characters"),
])
def test_bad_steps_say_what_is_wrong(service, kwargs, message) -> None:
    with pytest.raises(BadInput, match=message):
        step(service, Step(MESSAGES, **kwargs))


def test_a_path_beyond_the_context_is_refused(service) -> None:
    with pytest.raises(InputTooLong):
        step(service, Step(MESSAGES, (42,) * service.info.context_length))


def test_sampler_values_from_a_client_are_checked() -> None:
    assert parse_sampler(0.7, 40.0, 0.9) == Sampler(0.7, 40, 0.9)
    for bad in [("hot", 0, 1), (-1, 0, 1), (1, 2.5, 1), (1, 0, 1.5), (float("nan"), 0, 1), (True, 0, 1)]:
        with pytest.raises(BadInput):
            parse_sampler(*bad)


# --- over real HTTP: /step and /distribution on the launched app --------------------------------
@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server, verbose=False)


API_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_distribution_endpoint_matches_a_brute_force_softmax(client, engine) -> None:
    from greedyscore.types import Message

    out = client.predict(API_MESSAGES, [], 0.7, 5, 0.9, api_name="/distribution")
    prompt = engine.tokenizer.prompt_ids([Message("user", API_MESSAGES[0]["content"])])
    lp = forward(engine, prompt)[-1]
    sampled = reference(lp.float(), Sampler(0.7, 5, 0.9))
    assert len(out["top"]) == 20 and [e["id"] for e in out["top"]] == lp.topk(20).indices.tolist()
    for e in out["top"]:
        assert e["raw"] == pytest.approx(lp[e["id"]].exp().item(), abs=2e-4)
        assert e["sampled"] == pytest.approx(sampled[e["id"]].item(), abs=2e-3)
    assert out["rest"]["raw"] == pytest.approx(1 - sum(e["raw"] for e in out["top"]), abs=1e-6)
    assert out["p_greedy"] == pytest.approx(sampled[int(lp.argmax())].item(), abs=2e-3)
    assert set(out) >= {"top", "rest", "entropy", "p_greedy"}


def test_step_endpoint_builds_a_path_by_hand_and_finishes_it(client) -> None:
    greedy = client.predict(API_MESSAGES, [], api_name="/distribution")["top"][0]["id"]
    html, _, first, dist = client.predict(API_MESSAGES, [greedy], [], None, " Lyon, of course", api_name="/step")
    path = first["path"]
    assert path["text"].endswith(" Lyon, of course") and path["chosen"] == list(range(1, len(path["tokens"])))
    assert [t["chosen"] for t in path["tokens"]][0] is False and 'class="gs-step-take"' in dist
    assert first["next"]["top"][0]["id"] == first["next"]["greedy_id"]
    ids = [t["id"] for t in path["tokens"]]
    _, _, done, _ = client.predict(API_MESSAGES, ids, path["chosen"], None, "", 1.0, 0, 1.0, True, 16,
                                   api_name="/step")
    assert done["next"] is None and [t["id"] for t in done["path"]["tokens"]][: len(ids)] == ids
    assert done["path"]["chosen"] == path["chosen"] and len(done["path"]["tokens"]) > len(ids)


def test_step_endpoint_refuses_bad_input_and_keeps_serving(client) -> None:
    from gradio_client.exceptions import AppError

    for args, message in [((API_MESSAGES, [], [], 10**7), "unknown token id"),
                          ((API_MESSAGES, [], [], None, "", -1.0), "temperature"),
                          (([], []), "messages")]:
        with pytest.raises(AppError, match=message):
            client.predict(*args, api_name="/step")
    assert client.predict(API_MESSAGES, [], api_name="/distribution")["top"]


# --- the CLI twin, as a subprocess -------------------------------------------------------------------
def test_cli_step_json_equals_the_library_step(service) -> None:
    import json

    from test_cli import cli

    proc = cli("step", "--json", "--prefix", "[]", "--text", " Lyon", "--temperature", "0.5", "--sampler-top-k", "3",
               MESSAGES[-1].content)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    ours = step(service, Step((MESSAGES[-1],), force_text=" Lyon", sampler=Sampler(0.5, 3)))
    assert [t["id"] for t in out["path"]["tokens"]] == [t.id for t in ours.path.tokens]
    assert out["path"]["chosen"] == list(ours.path.chosen)
    assert [e["id"] for e in out["next"]["top"]] == [e.id for e in ours.next.top]
    assert out["next"]["p_greedy"] == pytest.approx(ours.next.p_greedy, abs=1e-3)
    assert sum(e["sampled"] > 0 for e in out["next"]["top"]) == 3  # top-k 3 kept three


def test_cli_step_refuses_bad_input_in_one_line() -> None:
    from test_cli import assert_one_line_error, cli

    assert_one_line_error(cli("step", "--prefix", "[1, x]", "hi"), "--prefix", code=2)
    assert_one_line_error(cli("step", "--top-p", "0", "hi"), "top_p", code=2)
    both = cli("step", "--token-id", "3", "--text", "a", "hi")  # argparse's own refusal, with its usage
    assert both.returncode == 2 and "not allowed with argument --token-id" in both.stderr


# --- rendering (pure) ----------------------------------------------------------------------------------
def test_the_panel_escapes_what_a_model_says_and_marks_the_picks(service) -> None:
    from test_app import HOSTILE

    from greedyscore.render.steer import distribution_html, path_html
    from greedyscore.render.view import View
    from greedyscore.types import NextToken, SamplerEntry

    top = (SamplerEntry(7, HOSTILE, 0.6, (0.7, 0.8, 1.0)), SamplerEntry(8, "\u202eevil", 0.3, (0.3, 0.2, 0)))
    view = NextToken(top, 0.1, (0.0, 0.0, 0.0), 1.2, 1.0, 7, Sampler(0.5, 2, 0.9))
    html = distribution_html(view)
    assert "<script>" not in html and "<img" not in html and "\u202e" not in html
    assert html.count('class="gs-step-take"') == 2 and 'data-token="7"' in html
    assert "temperature 0.5" in html and "top-k 2" in html and "top-p 0.9" in html
    out = step(service, Step(MESSAGES, force_text=" one two", settings=SETTINGS))
    page = path_html(out.path, View(), [0.5] * len(out.path.tokens), Sampler(0.5))
    assert page.count("gs-picked") == len(out.path.chosen) > 1
    assert page.count('class="gs-tip-lens"') == len(out.path.tokens)
    assert distribution_html(None, ended=True).count("nothing follows") == 1


# --- sharing a path built by hand ------------------------------------------------------------------------
def test_a_shared_path_keeps_its_picks_and_reruns_as_it_was(service) -> None:
    import time

    from greedyscore.sharing.document import SharedItem, share_reply
    from greedyscore.ui.actions import reproduce

    paused = step(service, Step(MESSAGES, force_text=" Lyon is", settings=SETTINGS)).path
    done = last(finish(service, Step(MESSAGES, tuple(t.id for t in paused.tokens), paused.chosen, settings=SETTINGS)))
    for reply in (paused, done):
        item = share_reply("chat", reply, MESSAGES, SETTINGS, service.identity, time.time())
        back = SharedItem.from_json(item.to_json())  # through the stored document
        assert back.reply.chosen == reply.chosen and back.reply.finish_reason == reply.finish_reason
        again = reproduce(service, back)
        assert again.reproduced, (reply.finish_reason, again.verdict)
        assert again.n_now == len(reply.tokens)


def test_a_shared_path_over_http_shows_its_picks(client) -> None:
    _, _, out, _ = client.predict(API_MESSAGES, [], [], None, " Lyon", api_name="/step")
    link = client.predict(out["path"], api_name="/share")
    page, _, doc, _ = client.predict(link["id"], api_name="/shared")
    reply = doc["conversation"]["turns"][0] if "conversation" in doc else doc["reply"]  # a turn holds its reply
    assert reply["chosen"] == out["path"]["chosen"] and reply["finish_reason"] == "step"
    assert page.count("gs-picked") == len(out["path"]["chosen"])
