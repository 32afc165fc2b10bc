"""A remote OpenAI-compatible server as an Engine: vLLM, LMDeploy's api_server or proxy, llama.cpp.

Turns go to `/v1/chat/completions` (streamed, greedy, neutral penalties, logprobs), so the server
applies its own chat template, as in production. Token ids come as vLLM's "token_id:N" and
`token_ids`, llama.cpp's `id`, or LMDeploy's vocabulary strings mapped with the local tokenizer
(which also gives the byte-faithful texts); LMDeploy leaves the chosen token out of `top_logprobs`,
so k + 1 are asked for. Logprobs that are not the model's true probabilities are refused
(`openai_wire.check_raw`). Rescoring uses vLLM's prompt logprobs on `/v1/completions`.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..errors import EngineUnavailable, ModelFailed, ModelNotFound, ServerRefused, Unsupported
from ..scoring import StepScores
from ..topk import ServerStep, step_scores
from .base import EngineInfo, GenerateRequest, Generation
from .hf_text import HFTokenizer
from .openai_wire import RAW_LOGPROBS_FIX, Broken, check_raw, chunks, http_error, text_of
from .threads import EngineThreads

RETRY_STATUS = frozenset({429, 502, 503, 504})
SERVER_MAX_LOGPROBS = 20  # vLLM's default --max-logprobs (and OpenAI's cap)
NEUTRAL = {  # sent explicitly: servers load a model's own defaults (vLLM) or have their own (llama-cpp-python)
    "temperature": 0.0, "top_p": 1.0, "repetition_penalty": 1.0, "repeat_penalty": 1.0, "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}


@dataclass(frozen=True)
class HTTPOptions:
    """Timeouts and retries for talking to a server (seconds)."""

    connect_timeout: float = 10.0
    read_timeout: float = 120.0  # the longest wait for the next chunk
    retries: int = 4  # on 429/5xx and connection errors, before the first token only
    backoff_s: float = 0.5  # doubled at each retry (or the server's Retry-After)


class OpenAIEngine:
    def __init__(self, client: httpx.Client, model_name: str, tokenizer: Any, context_length: int,
                 server: str, full_vocab: bool = False, options: HTTPOptions = HTTPOptions()) -> None:
        self.client = client
        self.server = server  # "vllm", "lmdeploy", "llamacpp", ... from /v1/models, for messages
        self.full_vocab = full_vocab
        self.options = options
        self.extra_body: dict[str, Any] = {}  # server-specific fields added to every generation (benchmarks)
        eos = tokenizer.eos_token_id
        what = "the whole vocabulary" if full_vocab else "top-k only: entropy as an interval"
        where = client.base_url.copy_with(username=None, password=None)  # the page is public: no credentials
        source = f"server logprobs ({server or 'OpenAI API'} at {where}), {what}"
        self.info = EngineInfo(
            name=model_name, backend="openai", score_source=source,
            context_length=context_length, vocab_size=len(tokenizer),
            stop_ids=frozenset([int(eos)] if eos is not None else []),
            concurrent=True,  # the server schedules: the service sends up to --concurrency requests at once
            server_template=True,  # turns go as messages; the server's template makes the prompt ids
        )
        self._vocab: dict[str, int] = tokenizer.get_vocab()  # token strings (LMDeploy names tokens so) -> ids
        self.tokenizer = HFTokenizer(tokenizer)

    # --- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, base_url: str, model: str | None = None, api_key: str | None = None, tokenizer: str | None = None,
             full_vocab: bool = False, options: HTTPOptions = HTTPOptions()) -> OpenAIEngine:
        """Connect: list the server's models, pick `model` (default: the only one), load its tokenizer."""
        url = base_url.rstrip("/") + "/"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(options.read_timeout, connect=options.connect_timeout)
        # no keep-alive: each request has its own connection, so Stop can shut exactly that one down
        # (the bound on requests in flight is --concurrency, the service's)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        client = httpx.Client(base_url=url, headers=headers, timeout=timeout, limits=limits)
        cards = _list_models(client, options)
        names = list(dict.fromkeys(str(c.get("id")) for c in cards))  # a proxy lists a model once per node
        if model is None:
            if len(names) != 1:
                raise ModelNotFound(f"the server at {url} serves {len(names)} models ({', '.join(names) or 'none'}): "
                                    "pick one with --model")
            model = names[0]
        if model not in names:
            raise ModelNotFound(f"the server at {url} has no model {model!r}; it serves: {', '.join(names) or 'none'} "
                                "(pass one of them as --model)")
        card = next(c for c in cards if str(c.get("id")) == model)
        tok, local_context = _load_tokenizer(model, tokenizer, card)
        context = int(card.get("max_model_len") or local_context)
        server = str(card.get("owned_by") or "")
        print(f"greedyscore: {model} on {server or 'an OpenAI-compatible server'} at {url} (context {context:,})",
              file=sys.stderr, flush=True)
        return cls(client, model, tok, context, server, full_vocab, options)

    # --- generation ----------------------------------------------------------------------------
    def decoder(self, max_rows: int = 16) -> EngineThreads:
        """The engine batches by itself: a row is a call in flight."""
        return EngineThreads(self.generate_batch, max_rows)

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        """One HTTP stream per request (the server batches): a chat turn when the request has
        messages, a completion of its token ids (a fork's prefix) when it has none."""
        return [self._generate(r) for r in requests]

    def _generate(self, req: GenerateRequest) -> Generation:
        ask = -1 if self.full_vocab else min(req.top_k + 1, SERVER_MAX_LOGPROBS)  # +1: LMDeploy drops the chosen
        common = {**self.extra_body, "model": self.info.name, "stream": True, "max_tokens": req.max_new_tokens,
                  **NEUTRAL, "return_tokens_as_token_ids": True, "return_token_ids": True, "return_logprob": True,
                  "stream_options": {"include_usage": True}}
        if req.messages:
            path = "v1/chat/completions"
            body = {**common, "messages": [{"role": m.role, "content": m.content} for m in req.messages],
                    "logprobs": True, "top_logprobs": ask}
        else:
            path = "v1/completions"
            body = {**common, "prompt": list(req.prompt_ids), "logprobs": ask, "skip_special_tokens": False}
        steps: list[ServerStep] = []
        got: dict[str, Any] = {}  # prompt_token_ids, prompt_tokens, finish_reason as they come
        cancel = req.cancel or threading.Event()

        def on_chunk(chunk: dict) -> None:
            if chunk.get("prompt_token_ids"):
                got["prompt_ids"] = tuple(int(i) for i in chunk["prompt_token_ids"])
            if chunk.get("usage"):
                got["n_prompt"] = chunk["usage"].get("prompt_tokens")
            for choice in chunk.get("choices") or []:
                new = self._read_steps(choice, req.top_k, len(steps))
                steps.extend(new)
                if new and req.on_ids:
                    req.on_ids([s.token_id for s in new])
                got["finish"] = choice.get("finish_reason") or got.get("finish")

        self._exchange(path, body, cancel, on_chunk, lambda: bool(steps))
        finish, prompt_ids, n_prompt = got.get("finish"), got.get("prompt_ids"), got.get("n_prompt")
        finish = "stop" if finish in ("stop", "eos") else "length" if finish == "length" else finish or "abort"
        notes: tuple[str, ...] = ()
        if req.messages and prompt_ids is None:  # no ids from the server: ours, when they add up
            try:
                local = tuple(self.tokenizer.prompt_ids(req.messages))
            except (ValueError, TypeError) as ex:  # no chat template here (LMDeploy has its own): keep the reply
                local = ()
                notes = (f"the local tokenizer cannot template these messages ({ex}): prompt ids unknown, so no "
                         "rescoring",)
            prompt_ids = local if local and n_prompt in (None, len(local)) else ()
            if local and not prompt_ids:
                notes = (f"the server's chat template made {n_prompt} prompt tokens, the local tokenizer's "
                         f"{len(local)}: prompt ids unknown, so no rescoring",)
        scores = step_scores(steps, req.top_k, self.info.vocab_size)
        return Generation(tuple(s.token_id for s in steps), finish, steps=scores, prompt_ids=prompt_ids, notes=notes)

    def _read_steps(self, choice: dict, top_k: int, at: int) -> list[ServerStep]:
        """A choice's logprob entries -> checked ServerSteps (chat or completions format)."""
        ids = (choice.get("token_ids") or choice.get("output_ids")  # vLLM, LMDeploy return_token_ids
               or [p[1] for p in choice.get("output_token_logprobs") or []])  # LMDeploy return_logprob
        lp = choice.get("logprobs") or {}
        if "content" in lp:  # chat: [{token, logprob, bytes, top_logprobs: [{token, logprob}]}]
            entries = [(e.get("id", e.get("token")), e.get("logprob"),
                        {a.get("id", a.get("token")): a.get("logprob") for a in e.get("top_logprobs") or []})
                       for e in lp["content"] or []]
        else:  # completions: {tokens, token_logprobs, top_logprobs: [{token: logprob}]}
            tops = lp.get("top_logprobs") or []
            entries = [(t, v, tops[i] if i < len(tops) and tops[i] else {})
                       for i, (t, v) in enumerate(zip(lp.get("tokens") or [], lp.get("token_logprobs") or []))]
        if ids and len(ids) != len(entries) or not entries and (ids or text_of(choice)):
            raise ServerRefused(f"the server sent {max(len(ids), 1)} token(s) with {len(entries)} logprob entries: it "
                                "does not return logprobs for this model or route. Fix: " + RAW_LOGPROBS_FIX)
        out = []
        for j, (key, logprob, alts) in enumerate(entries):
            token = int(ids[j]) if ids else self._token_id(key)
            if logprob is None:
                raise ServerRefused(f"the server sent token {at + j} without its logprob. Fix: {RAW_LOGPROBS_FIX}")
            top = {i: float(v) for i, v in zip(map(self._token_id, alts), alts.values()) if v is not None}
            step = ServerStep(token, float(logprob), top, full=self.full_vocab)
            check_raw(step, at + j, top_k)
            out.append(step)
        return out

    def _token_id(self, key: Any) -> int:
        """A server's name for a token -> its id: an int, "token_id:N", or a vocabulary string.
        A name the local tokenizer does not have means it is not the served model's: refused."""
        if isinstance(key, int) and not isinstance(key, bool):
            return key
        if isinstance(key, str) and key.startswith("token_id:") and key[9:].isdigit():
            return int(key[9:])
        if isinstance(key, str) and key in self._vocab:
            return self._vocab[key]
        raise ModelFailed(f"the server named a token {key!r} that the local tokenizer does not have: is --tokenizer "
                          f"the served model's ({self.info.name})?")

    # --- rescoring -----------------------------------------------------------------------------
    def score_ids(self, context_ids: Sequence[int], target_ids: Sequence[int], top_k: int,
                  cache: Any = None) -> StepScores:
        """Teacher-forced scores from the server's prompt logprobs (vLLM: `/v1/completions`,
        prompt = token ids, `prompt_logprobs`); each position's dict holds the true token and its rank."""
        ask = -1 if self.full_vocab else max(top_k, 2)
        body = {"model": self.info.name, "prompt": [*context_ids, *target_ids], "max_tokens": 1, **NEUTRAL,
                "prompt_logprobs": ask}
        data = self._post("v1/completions", body)
        rows = ((data.get("choices") or [{}])[0]).get("prompt_logprobs")
        if not rows:
            raise Unsupported(f"rescoring is unavailable on this server ({self.server or 'unknown type'}): it returns "
                              "no prompt logprobs (vLLM does; LMDeploy's /generate does, but its proxy does not "
                              "route it)")
        steps = []
        for i, tok in enumerate(target_ids):
            row = rows[len(context_ids) + i] or {}
            mine = row.get(str(tok))
            if mine is None:
                raise ModelFailed(f"the server's prompt logprobs lack token {tok} at position {len(context_ids) + i}")
            top = {int(k): float(v["logprob"]) for k, v in row.items()}
            steps.append(ServerStep(int(tok), float(mine["logprob"]), top, rank=int(mine["rank"]),
                                    full=self.full_vocab))
        return step_scores(steps, top_k, self.info.vocab_size)

    def logits(self, ids: Sequence[int], start: int, cache: Any = None) -> Iterator[Any]:
        """A server sends logprobs of listed tokens, never a whole row of logits."""
        raise Unsupported("whole next-token distributions need the model in this process (--backend transformers "
                          "or lmdeploy): a server sends only its top logprobs")

    # --- HTTP ----------------------------------------------------------------------------------
    def _post(self, path: str, body: dict) -> dict:
        out: list[dict] = []
        self._exchange(path, {**body, "stream": False}, threading.Event(), out.append, lambda: False)
        return out[0] if out else {}

    def _exchange(self, path: str, body: dict, cancel: threading.Event, on_chunk: Any, started: Any) -> None:
        """POST and feed each JSON object of the answer to `on_chunk`; failures are retried with backoff
        until `started()` (something shown). `cancel` shuts the socket down, whatever the request waits
        for: the server sees the disconnect and aborts."""
        url = f"{self.client.base_url}{path}"
        for attempt in range(self.options.retries + 1):
            if cancel.is_set():
                return
            conn: dict[str, Any] = {}
            try:
                with self._shut_on(cancel, conn):
                    with contextlib.closing(self._open(path, body, conn)) as response:
                        for chunk in chunks(response):
                            on_chunk(chunk)
                            if cancel.is_set():
                                return
                return
            except Broken as ex:
                if cancel.is_set():
                    return
                if started() or attempt == self.options.retries:
                    where = "mid-reply" if started() else f"after {attempt + 1} tries"
                    raise ModelFailed(f"the model server at {url} failed {where}: {ex}; try again") from ex
                self._wait(attempt, ex.retry_after, cancel)

    def _open(self, path: str, body: dict, conn: dict[str, Any]) -> httpx.Response:
        def trace(event: str, info: dict) -> None:  # every request has its own connection (no keep-alive)
            if event == "connection.connect_tcp.complete":
                conn["stream"] = info.get("return_value")

        request = self.client.build_request("POST", path, json=body, extensions={"trace": trace})
        try:
            response = self.client.send(request, stream=True)
        except httpx.TransportError as ex:
            raise Broken(f"cannot connect ({type(ex).__name__}): is it running?") from ex
        if response.status_code < 400:
            return response
        try:
            text = response.read().decode("utf-8", "replace")
        except httpx.HTTPError as ex:
            raise Broken(f"HTTP {response.status_code}, body lost ({type(ex).__name__})") from ex
        finally:
            response.close()
        if response.status_code in RETRY_STATUS:
            raise Broken(f"HTTP {response.status_code} {text.strip()[:200]}", response.headers.get("retry-after"))
        raise http_error(response.status_code, str(response.request.url), text, self.info.name)

    @contextmanager
    def _shut_on(self, cancel: threading.Event, conn: dict[str, Any]) -> Iterator[None]:
        """While inside: once `cancel` is set, shut the request's socket down (a blocked read returns;
        closing the response from this thread would not wake it)."""
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.05):
                if cancel.is_set():
                    stream = conn.get("stream")
                    sock = stream.get_extra_info("socket") if stream is not None else None
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)
                    return

        threading.Thread(target=watch, daemon=True, name="greedyscore-http-cancel").start()
        try:
            yield
        finally:
            done.set()

    def _wait(self, attempt: int, retry_after: str | None, cancel: threading.Event) -> None:
        try:
            delay = float(retry_after) if retry_after else self.options.backoff_s * 2**attempt
        except ValueError:
            delay = self.options.backoff_s * 2**attempt
        cancel.wait(min(delay, 30.0))


def _list_models(client: httpx.Client, options: HTTPOptions) -> list[dict]:
    url = f"{client.base_url}v1/models"
    for attempt in range(options.retries + 1):
        try:
            r = client.get("v1/models")
        except httpx.HTTPError as ex:
            if attempt == options.retries:
                raise EngineUnavailable(f"cannot reach the model server at {url} ({type(ex).__name__}): is it running? "
                                        "Check --base-url (e.g. http://host:8000)") from ex
            time.sleep(options.backoff_s * 2**attempt)
            continue
        if r.status_code in (401, 403):
            raise EngineUnavailable(f"the model server at {url} refused the API key (HTTP {r.status_code}): "
                                    "pass --api-key")
        if r.status_code >= 400:
            raise EngineUnavailable(f"{url} answered HTTP {r.status_code}: is --base-url an OpenAI-compatible server?")
        try:
            return list(r.json().get("data") or [])
        except (ValueError, AttributeError) as ex:
            raise EngineUnavailable(f"{url} did not answer a model list: is --base-url an OpenAI-compatible server?") \
                from ex
    raise AssertionError("unreachable")


def _load_tokenizer(model: str, tokenizer: str | None, card: dict) -> tuple[Any, int]:
    """The model's tokenizer from `tokenizer`, else the directory the server loaded (vLLM's `root`, when
    on this machine), else the embedded model's when served; and the context length its config states
    (for servers that do not say: LMDeploy, its proxy)."""
    from transformers import AutoConfig, AutoTokenizer

    from ..models import EMBEDDED_NAME, resolve_model

    root = card.get("root")
    if tokenizer:
        where = tokenizer
    elif isinstance(root, str) and (Path(root) / "tokenizer_config.json").is_file():
        where = root
    elif model == EMBEDDED_NAME:
        where = resolve_model(None)[1]
    else:
        raise EngineUnavailable(f"greedyscore needs {model!r}'s tokenizer to read token ids exactly: pass --tokenizer "
                                "DIR (a directory with its tokenizer.json / tokenizer_config.json)")
    try:
        tok = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as ex:
        raise ModelNotFound(f"could not load a tokenizer from {where!r}: {ex}".splitlines()[0]) from ex
    try:
        context = int(getattr(AutoConfig.from_pretrained(where), "max_position_embeddings", 0) or 0)
    except (OSError, ValueError):  # tokenizer files only
        context = 0
    return tok, context or min(int(tok.model_max_length), 1 << 20)

