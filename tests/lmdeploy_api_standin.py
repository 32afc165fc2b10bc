"""A stand-in for LMDeploy's api_server where its engines cannot run on a CPU.

Only what a CPU cannot show comes from here: the PyTorch engine's k-1 `top_logprobs` (the chosen
token removed), TurboMind's 0.0 for every greedy token, and raw logprobs next to a greedy path
that penalties moved off the argmax. The responses are built with LMDeploy 0.18's own classes
(`lmdeploy.serve.openai.protocol`) and its own logprob helpers
(`chat_completions.logprobs._create_chat_completion_logprobs` / `_create_output_token_logprobs`),
as its `/v1/chat/completions` streaming generator does; the numbers are the real model's, from
our transformers engine. The served model name picks the behaviour:

- "raw": `--backend pytorch --logprobs-mode raw_logprobs` (true top-k, chosen removed);
- "turbomind": renormalised after top_k=1, i.e. {chosen: 0.0};
- "penalised": raw logprobs, but the greedy path took the runner-up at the second token;
- "busy": "raw" after answering 429 (Retry-After: 0) to every other request, as an overloaded node;
- "unconfigured": the PyTorch engine started without --logprobs-mode (its 400, its words);
- "no-logprobs": text without logprobs (a gateway that strips them);
- "cut": the stream ends with [DONE] before any finish_reason;
- "slow": no answer (not even headers) for 30 s, as a request queued behind a proxy.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from lmdeploy.serve.openai.chat_completions.logprobs import (
    _create_chat_completion_logprobs,
    _create_output_token_logprobs,
)
from lmdeploy.serve.openai.errors import create_error_response
from lmdeploy.serve.openai.protocol import (
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    CompletionResponse,
    CompletionResponseChoice,
    DeltaMessage,
    ModelCard,
    ModelList,
    UsageInfo,
)

from greedyscore.engines.base import GenerateRequest
from greedyscore.types import Message

MODES = ("raw", "turbomind", "penalised", "busy", "unconfigured", "no-logprobs", "cut", "slow")


def make_app(engine) -> FastAPI:
    app = FastAPI()
    hf = engine.tokenizer.hf
    app.state.busy_calls = 0
    app.state.slow_started = threading.Event()

    @app.get("/v1/models")
    def models():
        return ModelList(data=[ModelCard(id=m, root=m) for m in MODES]).model_dump()

    @app.post("/v1/completions")
    async def completions(request: Request):  # LMDeploy's completions: no prompt logprobs
        body = await request.json()
        choice = CompletionResponseChoice(index=0, text="", finish_reason="length")
        return CompletionResponse(model=body["model"], choices=[choice], usage=UsageInfo()).model_dump()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        mode = body["model"]
        if mode not in MODES:
            return JSONResponse({"object": "error", "message": f"The model {mode!r} does not exist.", "code": 404},
                                status_code=404)
        if mode == "busy":
            app.state.busy_calls += 1
            if app.state.busy_calls % 2:
                return JSONResponse({"object": "error", "message": "too many requests"}, status_code=429,
                                    headers={"Retry-After": "0"})
        if mode == "unconfigured":  # lmdeploy/serve/openai/chat_completions/validation.py, via create_error_response
            msg = (f"Logprobs({body.get('logprobs')})/top_logprobs({body.get('top_logprobs')}) requested but not "
                   "enabled logprobs_mode in engine configuration")
            return create_error_response(400, msg)
        if mode == "slow":
            app.state.slow_started.set()
            await asyncio.sleep(30)
        messages = [Message(m["role"], m["content"]) for m in body["messages"]]
        prompt = engine.tokenizer.prompt_ids(messages)
        k = int(body.get("top_logprobs") or 1)  # LMDeploy asks its engine for `top_logprobs or 1`
        gen = engine.generate_batch([GenerateRequest(tuple(prompt), int(body["max_tokens"]), k)])[0]
        ids = list(gen.token_ids)
        rows = [dict(zip(gen.steps.top_ids[i].tolist(), gen.steps.top_logprobs[i].tolist())) for i in range(len(ids))]
        if mode == "turbomind":
            rows = [{t: 0.0} for t in ids]
        elif mode == "penalised" and len(ids) > 1:
            ids[1] = gen.steps.top_ids[1, 1].item()  # a penalty moved the greedy path to the runner-up
        rid, created = "chatcmpl-standin", int(time.time())

        def chunks():
            for i, tok in enumerate(ids):
                if mode == "cut" and i == len(ids) - 1:
                    yield "data: [DONE]\n\n"  # the server stops short
                    return
                choice = ChatCompletionResponseStreamChoice(
                    index=0, delta=DeltaMessage(role="assistant", content=hf.decode([tok])),
                    finish_reason=(gen.finish_reason if i == len(ids) - 1 else None),
                    logprobs=(_create_chat_completion_logprobs(hf, [tok], [rows[i]])
                              if body.get("logprobs") and mode != "no-logprobs" else None),
                    output_token_logprobs=(_create_output_token_logprobs([tok], [rows[i]])
                                           if body.get("return_logprob") and mode != "no-logprobs" else None))
                resp = ChatCompletionStreamResponse(id=rid, created=created, model=mode, choices=[choice])
                yield f"data: {json.dumps(resp.model_dump(mode='json', exclude_none=True))}\n\n"
            usage = UsageInfo(prompt_tokens=len(prompt), completion_tokens=len(ids),
                              total_tokens=len(prompt) + len(ids))
            resp = ChatCompletionStreamResponse(id=rid, created=created, model=mode, choices=[], usage=usage)
            yield f"data: {resp.model_dump_json(exclude_none=True)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return app


class StandIn:
    """The app served by uvicorn in a thread on a loopback port."""

    def __init__(self, engine, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.app = make_app(engine)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> StandIn:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
