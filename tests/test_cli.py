"""The CLI contract, checked from outside: a real subprocess, JSON schema, one-line errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOKEN_KEYS = {"id", "text", "special", "prob", "logprob", "rank", "entropy", "margin", "top"}


def cli(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "greedyscore", *args], capture_output=True, text=True, input=stdin,
        env=full_env, timeout=300, cwd=ROOT,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str, code: int | None = None) -> None:
    """One `greedyscore: error:` line naming `needles`, no traceback, and a deliberate exit code
    (2 for bad input, 1 otherwise; never a crash: -6 is the abort C++ gives a process that exits
    while the worker thread is inside torch)."""
    assert proc.returncode in ((1, 2) if code is None else (code,)), (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "terminate called" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("greedyscore: error:")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n.lower() in lines[0].lower(), lines[0]


def test_chat_json_schema(engine):
    proc = cli("chat", "--json", "--max-new-tokens", "12", "--top-k", "3", "--backend", "transformers", "你好")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert {"model", "backend", "text", "prompt_token_ids", "tokens", "stats", "timings"} <= set(d)
    assert d["backend"] == "transformers" and d["model"] == "SmolLM2-135M-Instruct"
    assert set(d["stats"]) == {"n_tokens", "mean_logprob", "perplexity", "min_prob"}
    assert set(d["timings"]) == {"generate_s", "score_s"}
    assert 0 < len(d["tokens"]) <= 12 and d["stats"]["n_tokens"] == len(d["tokens"])
    for t in d["tokens"]:
        assert TOKEN_KEYS <= set(t)
        assert len(t["top"]) == 3 and set(t["top"][0]) == {"id", "text", "prob"}
        assert math.isclose(t["prob"], math.exp(t["logprob"]), rel_tol=1e-9)
    assert "".join(t["text"] for t in d["tokens"] if not t["special"]) == d["text"]
    assert d["prompt_token_ids"] == engine.tokenizer.prompt_ids([__import__("greedyscore").Message("user", "你好")])


def test_chat_messages_file_and_stdin(tmp_path):
    msgs = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of Italy?"}]
    f = tmp_path / "m.json"
    f.write_text(json.dumps(msgs))
    a = cli("chat", "--json", "--max-new-tokens", "6", "--messages", str(f))
    b = cli("chat", "--json", "--max-new-tokens", "6", "--messages", "-", stdin=json.dumps(msgs))
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert json.loads(a.stdout)["tokens"] == json.loads(b.stdout)["tokens"]


def test_score_json():
    proc = cli("score", "--json", "--top-k", "2", "Paris is the capital of France.")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["text"] == "Paris is the capital of France." and d["tokens"][0]["text"] == "Paris"


def test_terminal_output_shows_every_token_with_its_probability():
    """The plain terminal output (stdout not a tty: no colours) against the JSON of the same greedy
    turn: one [text|p%] per token in order, each percentage the token's probability, the stats."""
    import re

    args = ("chat", "--max-new-tokens", "12", "--top-k", "2", "Say hello")
    plain, data = cli(*args), cli(*args, "--json")
    assert plain.returncode == 0 and data.returncode == 0, plain.stderr + data.stderr
    d = json.loads(data.stdout)
    body, legend, stats = plain.stdout.rstrip("\n").rsplit("\n", 2)
    cells = re.findall(r"[\[{]+(.*?)\|(>?[0-9.]+)%[\]}]+", body, re.S)
    assert len(cells) == len(d["tokens"])
    for (text, shown), t in zip(cells, d["tokens"]):
        assert text.replace("\u21b5", "\n") == t["text"] or t["special"]
        value = float(shown.lstrip(">"))
        assert abs(value - 100 * t["prob"]) <= max(0.05, 0.01 * value), (shown, t["prob"])
    assert legend.startswith("legend:")
    s = d["stats"]
    assert stats.startswith(f"{s['n_tokens']} tokens \u00b7 mean logprob ")
    assert f"perplexity {s['perplexity']:.4g}" in stats and f"finish {d['finish_reason']}" in stats


def test_help_lists_commands_and_examples():
    proc = cli("--help")
    assert proc.returncode == 0 and "chat" in proc.stdout and "examples:" in proc.stdout
    proc = cli("chat", "--help")
    assert "--max-new-tokens" in proc.stdout and "--messages" in proc.stdout


@pytest.mark.parametrize(
    "args,needles",
    [
        (("chat", ""), ("empty prompt",)),
        (("chat", "   "), ("empty prompt",)),
        (("chat",), ("empty prompt",)),
        (("chat", "--max-new-tokens", "0", "hi"), ("max_new_tokens", "positive")),
        (("chat", "--max-new-tokens", "-3", "hi"), ("max_new_tokens",)),
        (("chat", "--max-new-tokens", "100000", "hi"), ("beyond", "8,192")),
        (("chat", "--top-k", "21", "hi"), ("top_k", "20")),
        (("chat", "--model", "/nonexistent/model", "hi"), ("not found", "/nonexistent/model")),
        (("chat", "--model", "/tmp/nope.gguf", "hi"), ("not found",)),
        (("score", ""), ("empty text",)),
    ],
)
def test_bad_input_one_line(args, needles):
    assert_one_line_error(cli(*args), *needles)


BAD_INPUT_AFTER_THE_ENGINE_STARTS = [  # each found once exiting 134 (abort) after its message
    ("chat", "--max-new-tokens", "100000", "hi"),
    ("fork", "--max-new-tokens", "4", "--at", "99", "--token-id", "60", "Hi"),
    ("fork", "--max-new-tokens", "4", "--at", "1", "--token-id", "99999999", "Hi"),
]


def test_every_bad_input_exits_2_every_time():
    """Bad input that is only known once the engine (and its worker thread) has started: exit 2,
    five times each (the abort came 6 times in 6 here), never the abort."""
    for _ in range(5):
        for args in BAD_INPUT_AFTER_THE_ENGINE_STARTS:
            assert_one_line_error(cli(*args), code=2)


def run_bytes(*args: bytes, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """The CLI with raw bytes in argv and stdin, as a shell passes them."""
    proc = subprocess.run([sys.executable.encode(), b"-m", b"greedyscore", *args], capture_output=True, input=stdin,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300, cwd=ROOT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.mark.parametrize("args,needles", [
    ((b"chat", b"ab\xffcd"), ("PROMPT", "not valid UTF-8", "0xff")),
    ((b"chat", b"--max-new-tokens", b"4", b"\xed\xa0\x80"), ("PROMPT", "not valid UTF-8")),
    ((b"score", b"caf\xe9"), ("TEXT", "not valid UTF-8", "0xe9")),
    ((b"score", b"--prompt", b"\xc3", b"ok"), ("--prompt", "not valid UTF-8")),
    ((b"compare", b"--system-a", b"\x80", b"Paris."), ("--system-a", "not valid UTF-8")),
])
def test_invalid_utf8_arguments_are_named(args, needles):
    proc = run_bytes(*args)
    assert_one_line_error(proc, *needles, code=2)
    assert "loaded in" not in proc.stderr  # refused before any model loads


def test_messages_that_are_not_text_are_named(tmp_path):
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('[{"role": "user", "content": "café"}]'.encode("latin-1"))
    assert_one_line_error(cli("chat", "--messages", str(latin1)), "messages file", "not UTF-8", "0xe9", code=2)
    proc = run_bytes(b"chat", b"--messages", b"-", stdin='[{"role": "user", "content": "café"}]'.encode("cp1252"))
    assert_one_line_error(proc, "standard input", "not UTF-8", code=2)
    lone = tmp_path / "lone.json"
    lone.write_text('[{"role": "system", "content": "ok"}, {"role": "user", "content": "a\\udc80b"}]')
    assert_one_line_error(cli("chat", "--messages", str(lone)), "message 1", "U+DC80", code=2)


def test_huge_numbers_blame_the_input_not_the_model():
    digits = "7" * 5000
    assert_one_line_error(cli("fork", "--at", "1", "--token-id", "3", "--reply-ids", f"[{digits}]", "Hi"),
                          "--reply-ids", "digits", code=2)
    proc = cli("fork", "--at", "1", "--token-id", "3", "--reply-ids", f"[1, {'9' * 4000}]", "Hi")
    assert_one_line_error(proc, "reply token id", "64 bits", "4,000-digit", code=2)
    assert "the model or engine failed" not in proc.stderr


def test_bad_share_limits_exit_2_before_the_model_runs(tmp_path):
    """GREEDYSCORE_SHARE_TTL=-1 once deleted the whole store and still printed an id."""
    from greedyscore.sharing.store import ShareStore

    store = tmp_path / "shares.db"
    kept = ShareStore(store).put({"n": 1})
    for name, value in (("SHARE_TTL", "-1"), ("SHARE_TTL", "inf"), ("SHARE_MAX_MB", "-1"), ("SHARE_MAX_MB", "nan")):
        proc = cli("chat", "--json", "--share", "--store", str(store), "--max-new-tokens", "4", "Hi",
                   env={f"GREEDYSCORE_{name}": value})
        assert_one_line_error(proc, f"GREEDYSCORE_{name}", code=2)
        assert proc.stdout == "" and "loaded in" not in proc.stderr
    assert ShareStore(store).get(kept) == {"n": 1}


def test_unknown_role(tmp_path):
    f = tmp_path / "m.json"
    f.write_text(json.dumps([{"role": "wizard", "content": "hi"}]))
    assert_one_line_error(cli("chat", "--messages", str(f)), "unknown role", "wizard")


def test_bad_messages_file(tmp_path):
    f = tmp_path / "m.json"
    f.write_text("{not json")
    assert_one_line_error(cli("chat", "--messages", str(f)), "not valid json")
    assert_one_line_error(cli("chat", "--messages", str(tmp_path / "missing.json")), "cannot read")


def test_prompt_longer_than_context_says_both_lengths():
    long_prompt = "hello " * 9000  # ~9,000 tokens > 8,192
    proc = cli("chat", "--max-new-tokens", "4", long_prompt)
    assert_one_line_error(proc, "tokens", "8,192")
    assert any(ch.isdigit() for ch in proc.stderr.split("is", 1)[1].split("tokens")[0])


def test_prompt_plus_new_tokens_beyond_context():
    proc = cli("chat", "--max-new-tokens", "4000", "hello " * 5000)
    assert_one_line_error(proc, "max_new_tokens", "8,192")


def test_lmdeploy_without_cuda_says_what_to_do():
    proc = cli("chat", "--backend", "lmdeploy", "hi")
    assert_one_line_error(proc, "lmdeploy")
    assert "transformers" in proc.stderr or "make gpu" in proc.stderr


def test_fork_json_marks_the_shared_prefix(engine):
    chat = json.loads(cli("chat", "--json", "--max-new-tokens", "12", "What is the capital of France?").stdout)
    ids = [t["id"] for t in chat["tokens"]]
    runner_up = chat["tokens"][5]["top"][1]["id"]
    proc = cli("fork", "--json", "--at", "5", "--token-id", str(runner_up), "--max-new-tokens", "8",
               "--reply-ids", json.dumps(ids), "What is the capital of France?")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["forked_at"] == 5 and [t["id"] for t in d["tokens"][:5]] == ids[:5]
    assert d["tokens"][5]["id"] == runner_up and d["tokens"][5]["rank"] > 1
    assert [t["shared"] for t in d["tokens"]] == [i < 5 for i in range(len(d["tokens"]))]
    assert d["prompt_token_ids"] == chat["prompt_token_ids"]
    fresh = json.loads(cli("fork", "--json", "--at", "5", "--token-id", str(runner_up), "--max-new-tokens", "8",
                           "What is the capital of France?").stdout)  # the original from a fresh greedy run
    assert [t["id"] for t in fresh["tokens"]][:6] == [t["id"] for t in d["tokens"]][:6]


@pytest.mark.parametrize("args,needles", [
    (("--at", "99", "--token-id", "60"), ("at must be a position", "0 to")),
    (("--at", "1", "--token-id", "99999999"), ("unknown token id",)),
    (("--at", "1", "--token-id", "60", "--reply-ids", "[1, 2"), ("--reply-ids", "json")),
    (("--at", "-1", "--token-id", "60"), ("--at", "0 or more")),
])
def test_fork_bad_input_one_line(args, needles):
    assert_one_line_error(cli("fork", "--max-new-tokens", "6", *args, "Hi"), *needles)


def test_compare_json_and_score_calibration():
    proc = cli("compare", "--json", "--against", "int8", "--prompt", "Name a capital.", "Paris is the capital.")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["b"].endswith("(int8)") and "".join(s["text"] for s in data["spans"]) == "Paris is the capital."
    score = json.loads(cli("score", "--json", "The quick brown fox jumps over the lazy dog.").stdout)
    cal = score["calibration"]
    assert cal["n"] == len(score["tokens"]) and len(cal["bins"]) == 10
    assert sum(b["n"] for b in cal["bins"]) == cal["n"]
    assert cal["accuracy"] == sum(t["rank"] == 1 for t in score["tokens"]) / cal["n"]
    bad = cli("compare", "--against", "another model", "Paris.")
    assert_one_line_error(bad, "--compare-model")


def test_share_prints_an_id_the_demo_store_holds(tmp_path, service):
    from greedyscore.requests import Rerun
    from greedyscore.service import last
    from greedyscore.sharing.document import SharedItem, reproduction, rerun_plan
    from greedyscore.sharing.store import ShareStore

    store = tmp_path / "shares.db"
    proc = cli("chat", "--json", "--share", "--store", str(store), "--max-new-tokens", "6", "--top-k", "2", "Hi!")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["share"]["path"] == f"/?r={out['share']['id']}"
    item = SharedItem.from_json(ShareStore(store).get(out["share"]["id"]))
    assert [t.prob for t in item.reply.tokens] == [t["prob"] for t in out["tokens"]]
    assert item.messages[0].content == "Hi!" and item.settings.max_new_tokens == 6
    assert item.model == service.identity  # the same model: the same identity, in another process
    plan = rerun_plan(item)
    assert reproduction(item.reply, last(service.run(Rerun(plan.prompt, plan.settings))), 1e-3).reproduced
    (tmp_path / "a-file").write_text("x")
    proc = cli("score", "--share", "--store", str(tmp_path / "a-file" / "shares.db"), "Some text.")
    assert_one_line_error(proc, "cannot open the share store", "choose another --store", code=1)
    assert "loaded in" not in proc.stderr  # the store is checked before any model time is spent
