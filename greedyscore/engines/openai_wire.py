"""The OpenAI-compatible wire (`engines/openai.py`): a streamed answer's JSON objects, a server's
errors as greedyscore's, and the check that logprobs are the model's true probabilities."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx

from ..errors import BadInput, ModelFailed, ServerRefused
from ..topk import ServerStep

FLOOR = -9999.0  # vLLM clamps logprobs here (OpenAI's convention): at or below it means "no probability"
LOGPROB_TIE = 1e-5  # a listed alternative above the greedy token by more than this: not raw argmax
RAW_LOGPROBS_FIX = ("start LMDeploy's api_server with `--backend pytorch --logprobs-mode raw_logprobs`, or vLLM with "
                    "its default `--logprobs-mode raw_logprobs`, and no penalties")


class Broken(Exception):
    """A request that failed in a way worth retrying if nothing has been shown yet."""

    def __init__(self, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def chunks(response: httpx.Response) -> Iterator[dict]:
    """The JSON objects of an answer. A stream must end with [DONE] or a finish_reason; LMDeploy's
    proxy reports a dead node as a bare {"error_code", "text"} line, vLLM as a data: {"error"} event."""
    try:
        if "text/event-stream" not in response.headers.get("content-type", ""):
            data = json.loads(response.read())
            if not isinstance(data, dict) or "error_code" in data and "choices" not in data:
                raise Broken(f"the server answered {_message(data)}")
            yield data
            return
        finished = False
        for line in response.iter_lines():
            line = line.strip()
            if not line or line.startswith(":"):
                continue
            payload = line[5:].strip() if line.startswith("data:") else line
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if not isinstance(chunk, dict) or chunk.get("error") or "error_code" in chunk:
                err = chunk.get("error") if isinstance(chunk, dict) else chunk
                raise Broken(f"the server sent an error: {_message(err if isinstance(err, dict) else chunk)}")
            finished = finished or any(c.get("finish_reason") for c in chunk.get("choices") or [])
            yield chunk
        if not finished:
            raise Broken("the stream ended before the reply did")
    except (httpx.HTTPError, json.JSONDecodeError) as ex:
        raise Broken(f"the connection broke ({type(ex).__name__})") from ex


def check_raw(step: ServerStep, position: int, top_k: int) -> None:
    """Refuse numbers that are not the model's true probabilities."""
    finite = [v for i, v in step.top.items() if i != step.token_id and v > FLOOR]
    if step.logprob == 0.0 and not finite:
        raise ServerRefused(
            "the server gave logprob 0.0 to the greedy token with no alternatives: these are renormalised after "
            "top-k sampling (LMDeploy's TurboMind engine does this), not the model's probabilities. "
            f"Fix: {RAW_LOGPROBS_FIX}")
    total = math.fsum(math.exp(v) for v in step.top.values()) + (
        0.0 if step.token_id in step.top else math.exp(step.logprob))
    if total > 1.0 + 1e-3:
        raise ServerRefused(f"the server's probabilities at token {position} add up to {total:.3f}, more than 1: "
                            f"they are renormalised or processed, not the model's. Fix: {RAW_LOGPROBS_FIX}")
    if step.full and total < 1.0 - 1e-3:
        raise ServerRefused(f"--full-vocab, but the server's probabilities at token {position} add up to only "
                            f"{total:.3f}: it sent part of the vocabulary. Start vLLM with --max-logprobs -1, or "
                            "drop --full-vocab")
    best = max(step.top.values(), default=step.logprob)
    if best > step.logprob + LOGPROB_TIE:
        raise ServerRefused(
            f"the server's token {position} is not the most likely in its own logprobs ({math.exp(step.logprob):.4f} "
            f"vs {math.exp(best):.4f}): the logprobs are processed (penalties, temperature) or the reply was not "
            f"greedy. Fix: {RAW_LOGPROBS_FIX}")


def text_of(choice: dict) -> str:
    """The text a chunk's choice carries (chat delta or completion)."""
    delta = choice.get("delta") or {}
    return str((delta.get("content") if isinstance(delta, dict) else None) or choice.get("text") or "")


def _message(err: Any) -> str:
    text = (err.get("message") or err.get("msg") or err.get("text") or err) if isinstance(err, dict) else err
    return str(text)[:300]


def http_error(status: int, url: str, text: str, model: str) -> Exception:
    try:
        data = json.loads(text)
        detail = _message(data.get("error", data.get("detail", data.get("message", data))))
    except (json.JSONDecodeError, AttributeError):
        detail = text.strip()[:300]
    if status in (401, 403):
        return ModelFailed(f"the model server at {url} refused the API key (HTTP {status}): check --api-key")
    if status == 404:
        return ModelFailed(f"the model server at {url} answered 404 for model {model!r}: {detail}")
    lowered = detail.lower()
    if "logprobs_mode" in lowered or "logprobs-mode" in lowered:
        return ServerRefused(f"the server does not return logprobs ({detail}). Fix: {RAW_LOGPROBS_FIX}")
    if "max_logprobs" in lowered or "max-logprobs" in lowered:
        return ServerRefused(f"the server caps logprobs ({detail}). Fix: start vLLM with --max-logprobs -1 (or 20+), "
                             "or drop --full-vocab")
    if status in (400, 422):
        return BadInput(f"the model server refused the request: {detail}")
    return ModelFailed(f"the model server at {url} answered HTTP {status}: {detail}")
