"""A ScoredReply back from its JSON (`ScoredReply.to_json`): for shared results, which come back
from a store or from an API client, so every field is checked and a bad one named.

Example: reply_from_json(reply.to_json()) == reply (calibration included).
"""

from __future__ import annotations

import math
from typing import Any

from .errors import BadInput
from .types import Alternative, Calibration, CalibrationBin, ReplyStats, ScoredReply, ScoredToken, Timings

FINISH_REASONS = ("stop", "length", "abort")


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


def _int(d: Any, key: str, where: str, lo: int = 0, optional: bool = False) -> Any:
    if optional and (not isinstance(d, dict) or d.get(key) is None):
        return None
    v = _get(d, key, where)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise BadInput(f"not a greedyscore reply JSON: {where}.{key} must be a whole number >= {lo}, got {v!r}")
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


def _token(d: Any, where: str) -> ScoredToken:
    top = tuple(Alternative(_int(a, "id", f"{where}.top[{j}]"), _str(a, "text", f"{where}.top[{j}]"),
                            _num(a, "prob", f"{where}.top[{j}]", 0.0, 1.0))
                for j, a in enumerate(_list(d, "top", where)))
    return ScoredToken(
        id=_int(d, "id", where), text=_str(d, "text", where), special=_bool(d, "special", where),
        prob=_num(d, "prob", where, 0.0, 1.0), logprob=_num(d, "logprob", where, hi=0.0),
        rank=_int(d, "rank", where, 1), entropy=_num(d, "entropy", where, 0.0),
        margin=_num(d, "margin", where, -1.0, 1.0), top=top, joined=_int(d, "joined", where, optional=True) or 0,
        entropy_max=_num(d, "entropy_max", where, 0.0, optional=True),
        rescored_prob=_num(d, "rescored_prob", where, 0.0, 1.0, optional=True),
        rescored_rank=_int(d, "rescored_rank", where, 1, optional=True),
        near_tie=_bool(d, "near_tie", where),
    )


def calibration_from_json(d: Any) -> Calibration:
    bins = tuple(CalibrationBin(_num(b, "lo", "calibration.bins", 0, 1), _num(b, "hi", "calibration.bins", 0, 1),
                                _int(b, "n", "calibration.bins"), _num(b, "confidence", "calibration.bins", 0, 1),
                                _num(b, "accuracy", "calibration.bins", 0, 1))
                 for b in _list(d, "bins", "calibration"))
    return Calibration(bins, _num(d, "ece", "calibration", 0, 1), _num(d, "brier", "calibration", 0, 1),
                       _int(d, "n", "calibration"), _num(d, "accuracy", "calibration", 0, 1))


def reply_from_json(d: Any) -> ScoredReply:
    """The inverse of `ScoredReply.to_json`; BadInput naming the first field that is wrong."""
    if not isinstance(d, dict):
        raise BadInput("not a greedyscore reply JSON: expected an object with \"tokens\"")
    tokens = tuple(_token(t, f"tokens[{i}]") for i, t in enumerate(_list(d, "tokens", "the reply")))
    prompt = _list(d, "prompt_token_ids", "the reply")
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in prompt):
        raise BadInput("not a greedyscore reply JSON: prompt_token_ids must be token ids")
    stats = _get(d, "stats", "the reply")
    timings = d.get("timings") or {"generate_s": 0.0, "score_s": 0.0}
    finish = _str(d, "finish_reason", "the reply", "stop")
    if finish not in FINISH_REASONS:
        raise BadInput(f"not a greedyscore reply JSON: finish_reason must be one of {', '.join(FINISH_REASONS)}")
    notes = d.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise BadInput("not a greedyscore reply JSON: notes must be a list of strings")
    cal = d.get("calibration")
    forked_at = _int(d, "forked_at", "the reply", optional=True)
    if forked_at is not None and forked_at >= len(tokens):
        raise BadInput("not a greedyscore reply JSON: forked_at is beyond its tokens")
    return ScoredReply(
        model=_str(d, "model", "the reply"), backend=_str(d, "backend", "the reply"), text=_str(d, "text", "the reply"),
        prompt_token_ids=tuple(prompt), tokens=tokens,
        stats=ReplyStats(_int(stats, "n_tokens", "stats"), _num(stats, "mean_logprob", "stats", hi=0.0),
                         _num(stats, "perplexity", "stats", 0.0), _num(stats, "min_prob", "stats", 0.0, 1.0)),
        timings=Timings(_num(timings, "generate_s", "timings", 0.0), _num(timings, "score_s", "timings", 0.0)),
        finish_reason=finish, verified=_bool(d, "verified", "the reply"), notes=tuple(notes),
        score_source=_str(d, "score_source", "the reply", ""),
        forked_at=forked_at,
        calibration=calibration_from_json(cal) if cal is not None else None,
    )
