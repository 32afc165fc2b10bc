"""A ScoredReply back from its JSON, for shared results from a store or an API client: nothing taken on
trust. Numbers are bounded, a token whose numbers contradict each other is refused, and what follows
from the tokens (text, stats, near ties, calibration) is derived again, never read; a bad field is named.
"""

from __future__ import annotations

import math
from typing import Any

from ..calibration import calibration
from ..errors import BadInput
from ..stats import is_near_tie, reply_stats
from ..types import Alternative, ScoredReply, ScoredToken, Settings, Timings

FINISH_REASONS = ("stop", "length", "abort", "step")
MAX_ID = 2**31 - 1  # token ids, ranks, counts: every vocabulary and context is far below
MAX_ENTROPY = 64.0  # nats: log of a 2^64-token vocabulary is 44
MAX_SECONDS = 1e7
AGREE = 1e-5  # how far numbers that must agree may differ (float32 scores, read as float64)
TOLERANCE = Settings().tolerance  # near ties by this server's rule, never a document's


def _get(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise BadInput(f"not a greedyscore reply JSON: {where} has no {key!r}")
    return d[key]


def _num(d: Any, key: str, where: str, lo: float = -math.inf, hi: float = math.inf, optional: bool = False) -> Any:
    if optional and (not isinstance(d, dict) or d.get(key) is None):
        return None
    v = _get(d, key, where)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
        raise BadInput(f"not a greedyscore reply JSON: {where}.{key} must be a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def _int(d: Any, key: str, where: str, lo: int = 0, optional: bool = False, hi: int = MAX_ID) -> Any:
    if optional and (not isinstance(d, dict) or d.get(key) is None):
        return None
    v = _get(d, key, where)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        got = f"a {v.bit_length()}-bit number" if isinstance(v, int) and v.bit_length() > 64 else repr(v)
        raise BadInput(f"not a greedyscore reply JSON: {where}.{key} must be a whole number in [{lo}, {hi:,}], "
                       f"got {got}")
    return v


def _str(d: Any, key: str, where: str, default: str | None = None) -> str:
    if default is not None and isinstance(d, dict) and key not in d:
        return default
    v = _get(d, key, where)
    if not isinstance(v, str):
        raise BadInput(f"not a greedyscore reply JSON: {where}.{key} must be a string")
    return v


def _bool(d: Any, key: str, where: str, default: bool = False) -> bool:
    v = d.get(key, default) if isinstance(d, dict) else default
    if not isinstance(v, bool):
        raise BadInput(f"not a greedyscore reply JSON: {where}.{key} must be true or false")
    return v


def _list(d: Any, key: str, where: str) -> list:
    v = _get(d, key, where)
    if not isinstance(v, list):
        raise BadInput(f"not a greedyscore reply JSON: {where}.{key} must be a list")
    return v


def _token(d: Any, where: str, index: int) -> ScoredToken:
    top = tuple(Alternative(_int(a, "id", f"{where}.top[{j}]"), _str(a, "text", f"{where}.top[{j}]"),
                            _num(a, "prob", f"{where}.top[{j}]", 0.0, 1.0))
                for j, a in enumerate(_list(d, "top", where)))
    prob, logprob = _num(d, "prob", where, 0.0, 1.0), _num(d, "logprob", where, hi=0.0)
    margin = _num(d, "margin", where, 0.0, 1.0)
    _agree(prob, math.exp(logprob), f"{where}: prob and exp(logprob)")
    if any(b.prob > a.prob + AGREE for a, b in zip(top, top[1:])):
        raise BadInput(f"not a greedyscore reply JSON: {where}.top is not in order of probability")
    if len(top) >= 2:
        _agree(margin, top[0].prob - top[1].prob, f"{where}: the margin and its top two alternatives")
    token_id = _int(d, "id", where)
    for a in top:
        if a.id == token_id:
            _agree(prob, a.prob, f"{where}: prob and its own entry in top")
    rank = _int(d, "rank", where, 1)
    if rank == 1 and top and prob < top[0].prob - AGREE:
        raise BadInput(f"not a greedyscore reply JSON: {where} has rank 1 but a likelier alternative")
    entropy = _num(d, "entropy", where, 0.0, MAX_ENTROPY)
    entropy_max = _num(d, "entropy_max", where, entropy, MAX_ENTROPY, optional=True)
    rescored_prob = _num(d, "rescored_prob", where, 0.0, 1.0, optional=True)
    rescored_rank = _int(d, "rescored_rank", where, 1, optional=True)
    _bool(d, "near_tie", where)  # checked, then derived
    near_tie = (rescored_prob is not None and rescored_rank is not None
                and is_near_tie(prob, rescored_prob, rescored_rank, TOLERANCE))
    return ScoredToken(
        id=token_id, text=_str(d, "text", where), special=_bool(d, "special", where), prob=prob, logprob=logprob,
        rank=rank, entropy=entropy, margin=margin, top=top,
        joined=_int(d, "joined", where, optional=True, hi=index) or 0, entropy_max=entropy_max,
        rescored_prob=rescored_prob, rescored_rank=rescored_rank, near_tie=near_tie,
    )


def _agree(a: float, b: float, what: str) -> None:
    if abs(a - b) > AGREE:
        raise BadInput(f"not a greedyscore reply JSON: {what} disagree ({a!r} vs {b!r})")


def reply_from_json(d: Any) -> ScoredReply:
    """The inverse of `ScoredReply.to_json`; BadInput naming the first field that is wrong."""
    if not isinstance(d, dict):
        raise BadInput("not a greedyscore reply JSON: expected an object with \"tokens\"")
    tokens = tuple(_token(t, f"tokens[{i}]", i) for i, t in enumerate(_list(d, "tokens", "the reply")))
    prompt = _list(d, "prompt_token_ids", "the reply")
    if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= MAX_ID for t in prompt):
        raise BadInput(f"not a greedyscore reply JSON: prompt_token_ids must be token ids (0 to {MAX_ID:,})")
    _get(d, "stats", "the reply")  # derived from the tokens below, whatever it claims
    _str(d, "text", "the reply")  # likewise
    timings = d.get("timings") or {"generate_s": 0.0, "score_s": 0.0}
    finish = _str(d, "finish_reason", "the reply", "stop")
    if finish not in FINISH_REASONS:
        raise BadInput(f"not a greedyscore reply JSON: finish_reason must be one of {', '.join(FINISH_REASONS)}")
    notes = d.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise BadInput("not a greedyscore reply JSON: notes must be a list of strings")
    cal = d.get("calibration")
    if cal is not None and not isinstance(cal, dict):
        raise BadInput("not a greedyscore reply JSON: calibration must be an object")
    forked_at = _int(d, "forked_at", "the reply", optional=True)
    if forked_at is not None and forked_at >= len(tokens):
        raise BadInput("not a greedyscore reply JSON: forked_at is beyond its tokens")
    chosen = d.get("chosen", [])
    if not isinstance(chosen, list) or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(tokens)
                                           for c in chosen):
        raise BadInput("not a greedyscore reply JSON: chosen must list positions of its tokens")
    return ScoredReply(
        model=_str(d, "model", "the reply"), backend=_str(d, "backend", "the reply"),
        text="".join(t.text for t in tokens if not t.special),
        prompt_token_ids=tuple(prompt), tokens=tokens, stats=reply_stats([t.logprob for t in tokens]),
        timings=Timings(_num(timings, "generate_s", "timings", 0.0, MAX_SECONDS),
                        _num(timings, "score_s", "timings", 0.0, MAX_SECONDS)),
        finish_reason=finish, verified=_bool(d, "verified", "the reply"), notes=tuple(notes),
        score_source=_str(d, "score_source", "the reply", ""),
        forked_at=forked_at,
        calibration=calibration(tokens) if cal is not None else None,
        chosen=tuple(sorted(set(chosen))),
    )
