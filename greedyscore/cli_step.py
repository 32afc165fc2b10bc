"""`python -m greedyscore step`: one step of a reply built by hand, the API's /step twin.

After PROMPT and --prefix (the reply's ids so far), optionally take --token-id or the tokens of
--text, then print the path and the next-token distribution (raw and through a sampler), or with
--finish continue greedily to the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from .errors import BadInput
from .render.text import pct, visible
from .types import Message, NextToken, Settings, Stepped

if TYPE_CHECKING:
    from .service import Service


def add_step(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    step = sub.add_parser(
        "step", parents=parents, help="build a reply by hand: the next-token distribution after a prefix",
        description="After PROMPT and --prefix (the reply's token ids so far), optionally force --token-id or "
                    "the tokens of --text, then show the path scored and the next token's distribution, raw "
                    "and through a sampler (temperature -> top-k -> top-p); --finish continues greedily.")
    step.add_argument("--prefix", metavar="JSON", default="[]", help="the reply's token ids so far (default: [])")
    step.add_argument("--chosen", metavar="JSON", default="[]",
                      help="positions of the prefix picked by hand, to mark them (the JSON's path.chosen)")
    force = step.add_mutually_exclusive_group()
    force.add_argument("--token-id", type=int, help="take this token next")
    force.add_argument("--text", help="take the tokens of this text next (scored as the sequence it is)")
    step.add_argument("--temperature", type=float, default=1.0, help="the sampler's temperature (0 = greedy)")
    step.add_argument("--sampler-top-k", type=int, default=0, help="the sampler's top-k (0 = off)")
    step.add_argument("--top-p", type=float, default=1.0, help="the sampler's top-p (1 = off)")
    step.add_argument("--finish", action="store_true", help="continue greedily from the end of the path")


def _ids(raw: str, what: str) -> list[Any]:
    try:
        ids = json.loads(raw)
    except ValueError as ex:
        raise BadInput(f"{what} must be a JSON list of whole numbers, e.g. [1, 2, 3]") from ex
    if not isinstance(ids, list):
        raise BadInput(f"{what} must be a JSON list of whole numbers, e.g. [1, 2, 3]")
    return ids


def run_step(args: argparse.Namespace, messages: list[Message], opened: list[Service]) -> Stepped:
    """Check everything, then load the engine (put in `opened` for the caller to close) and step."""
    from . import steer
    from .engine_args import engine_from_args
    from .requests import Step, parse_sampler
    from .service import Service, last

    sampler = parse_sampler(args.temperature, args.sampler_top_k, args.top_p)
    settings = Settings(args.max_new_tokens, args.top_k, args.verify)
    request = Step(tuple(messages), _ids(args.prefix, "--prefix"), _ids(args.chosen, "--chosen"), args.token_id,
                   args.text or "", sampler, settings, args.finish)
    service = Service(engine_from_args(args))
    opened.append(service)
    if args.finish:
        return Stepped(last(steer.finish(service, request)), None)
    return steer.step(service, request)


def print_step(stepped: Stepped, use_color: bool, color_by: str) -> None:
    from .render.terminal import reply_ansi
    from .render.view import View

    print(reply_ansi(stepped.path, View(color_by), use_color=use_color))
    if stepped.path.chosen:
        print(f"chosen by hand: positions {', '.join(map(str, stepped.path.chosen))}")
    if stepped.next is None:
        print("the path has ended: nothing follows", file=sys.stderr)
        return
    _print_next(stepped.next)


def _print_next(view: NextToken) -> None:
    s = view.sampler
    print(f"next token: entropy {view.entropy:.3f} nats; sampler temperature {s.temperature:g}, top-k "
          f"{s.top_k or 'off'}, top-p {s.top_p:g}; p(sampling picks the greedy token) {pct(view.p_greedy)}")
    print(f"{'#':>3} {'id':>6}  {'token':<18} {'raw':>9} {'sampled':>9}")
    for rank, e in enumerate(view.top, 1):
        print(f"{rank:>3} {e.id:>6}  {visible(e.text, spaces=True)!s:<18} {pct(e.raw):>9} {pct(e.sampled):>9}")
    print(f"{'':>3} {'':>6}  {'(every other)':<18} {pct(view.rest_raw):>9} {pct(view.rest_stages[-1]):>9}")
