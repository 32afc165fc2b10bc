"""A scripted engine for tests (like simonw/llm's MockModel): fixed logits per step, no model.

It implements the Engine protocol (its tokenizer a `ScriptedTokenizer`) on a byte vocabulary
(id = 2 + byte; 0 = <|end|>, the stop token; 1 = <bos>), so multi-byte characters split over
tokens as with a real byte-level tokenizer. A reply is scripted per user message; each step's
logits give the scripted token 5.0 and the next id 4.0 (everything else 0.0), so its scores are known exactly.

Knobs that make timing-dependent logic testable without clocks:
- `hold`: a batch waits on this event before its first step (the decoder: before every step);
- `permits`: if set, each step takes one permit (the test releases them one by one);
- `fail_on`: user messages whose presence in a batch makes that batch raise.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from scripted_decoder import ScriptedDecoder

from greedyscore.engines.base import EngineInfo, GenerateRequest, Generation
from greedyscore.engines.threads import EngineThreads
from greedyscore.scoring import StepScores, empty_scores, score_rows
from greedyscore.types import Message

END, BOS = 0, 1
SPECIAL = {END: "<|end|>", BOS: "<bos>"}
VOCAB = 258
FILLER = 2 + ord(".")  # what a reply says after its script runs out


def ids_of(text: str) -> list[int]:
    return [2 + b for b in text.encode()]


class ScriptedTokenizer:
    """The byte vocabulary's Tokenizer; it remembers which user message each prompt it made ends with."""

    def __init__(self) -> None:
        self.keys: dict[tuple[int, ...], str] = {}

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        ids = [BOS]
        for m in messages:
            ids += ids_of(f"{m.role}: {m.content}\n")
        self.keys[tuple(ids)] = messages[-1].content
        return ids

    def text_ids(self, text: str) -> tuple[list[int], list[int]]:
        return [BOS], ids_of(text)

    def decode(self, ids: Sequence[int]) -> str:
        raw = b"".join(SPECIAL[i].encode() if i in SPECIAL else bytes([i - 2]) for i in ids)
        return raw.decode("utf-8", "replace")

    def display(self, token_id: int) -> str:
        text = self.decode([token_id])
        return f"\\x{token_id - 2:02x}" if "\ufffd" in text else text

    def is_special(self, token_id: int) -> bool:
        return token_id in SPECIAL


class ScriptedEngine:
    def __init__(self, replies: dict[str, str], concurrent: bool = False, stop: bool = True) -> None:
        self.info = EngineInfo(name="scripted", backend="scripted", context_length=4096, vocab_size=VOCAB,
                               score_source="scripted float32 logits, softmax in float32", stop_ids=frozenset({END}),
                               concurrent=concurrent)
        self.tokenizer = ScriptedTokenizer()
        self.replies = replies  # user message -> reply text (then <|end|> if stop)
        self.stop = stop
        self.hold = threading.Event()
        self.hold.set()
        self.permits: threading.Semaphore | None = None
        self.fail_on: set[str] = set()
        self.batches: list[list[str]] = []  # the user messages of each batch, in order

    # --- generation and scoring --------------------------------------------------------------
    def script(self, prompt_ids: Sequence[int]) -> list[int]:
        reply = self.replies.get(self.tokenizer.keys.get(tuple(prompt_ids), ""), "")
        return ids_of(reply) + ([END] if self.stop else [])

    @staticmethod
    def logits_for(chosen: int) -> torch.Tensor:
        row = torch.zeros(VOCAB)
        row[(chosen + 1) % VOCAB] = 4.0
        row[chosen] = 5.0
        return row

    filler = FILLER

    def decoder(self, max_rows: int = 16) -> Any:
        """Rows stepped by the scheduler; concurrent: calls in flight, as LMDeploy's."""
        if self.info.concurrent:
            return EngineThreads(self.generate_batch, max_rows)
        return ScriptedDecoder(self)

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[Generation]:
        keys = [self.tokenizer.keys.get(tuple(r.prompt_ids), "") for r in requests]
        self.batches.append(keys)
        if self.fail_on & set(keys):
            raise RuntimeError("injected failure")
        self.hold.wait(30)
        scripts = [self.script(r.prompt_ids) for r in requests]
        out: list[list[int]] = [[] for _ in requests]
        reasons: list[str | None] = [None] * len(requests)
        for step in range(max(r.max_new_tokens for r in requests)):
            if all(reasons):
                break
            if self.permits is not None:
                self.permits.acquire(timeout=30)
            for b, req in enumerate(requests):
                if reasons[b]:
                    continue
                if req.cancel is not None and req.cancel.is_set():
                    reasons[b] = "abort"
                    continue
                tok = scripts[b][step] if step < len(scripts[b]) else FILLER
                out[b].append(tok)
                if req.on_ids is not None:
                    req.on_ids([tok])
                if tok in self.info.stop_ids:
                    reasons[b] = "stop"
                elif len(out[b]) == req.max_new_tokens:
                    reasons[b] = "length"
        return [Generation(tuple(ids), reason or "length", steps=self._scores(ids, req.top_k))
                for ids, reason, req in zip(out, reasons, requests)]

    def score_ids(self, context_ids: Sequence[int], target_ids: Sequence[int], top_k: int, cache: Any = None
                  ) -> StepScores:
        return self._scores(list(target_ids), top_k)

    def _scores(self, ids: list[int], top_k: int) -> StepScores:
        if not ids:
            return empty_scores(top_k)
        logits = torch.stack([self.logits_for(t) for t in ids])  # [n, vocab]
        return score_rows(logits, torch.tensor(ids), top_k)

    def logits(self, ids: Sequence[int], start: int, cache: Any = None) -> Iterator[torch.Tensor]:
        """Row p favours ids[p + 1], and after the ids what the script says next (its prompt the
        longest known prefix of ids)."""
        prompt = max((k for k in self.tokenizer.keys if tuple(ids[:len(k)]) == k), key=len, default=())
        script = self.script(prompt) if prompt else []
        rows = []
        for p in range(start, len(ids)):
            n = p + 1 - len(prompt)
            nxt = ids[p + 1] if p + 1 < len(ids) else (script[n] if 0 <= n < len(script) else FILLER)
            rows.append(self.logits_for(nxt))
        yield torch.stack(rows)
