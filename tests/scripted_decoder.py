"""The scripted engine's decoder: the join/step protocol the scheduler drives, one scripted token
per row per step, so the scheduler's Stop, fault, bound and fairness paths run on the real loop
with no model and no clock.

Knobs (on the engine): `hold` (each step waits on it), `permits` (each step takes one), `fail_on`
(a request with one of these user messages fails at its join, as a failed prefill would).
Each step's rows are recorded in `engine.batches` (their user messages) before it waits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from greedyscore.engines.base import GenerateRequest, Generation


@dataclass
class _Row:
    request: GenerateRequest
    tag: Any
    key: str
    script: list[int]
    ids: list[int] = field(default_factory=list)


class ScriptedDecoder:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.rows: list[_Row] = []

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, request: GenerateRequest, tag: Any) -> None:
        key = self.engine.tokenizer.keys.get(tuple(request.prompt_ids), "")
        if key in self.engine.fail_on:
            raise RuntimeError("injected failure")
        self.rows.append(_Row(request, tag, key, self.engine.script(request.prompt_ids)))

    def step(self) -> list[tuple[Any, Generation]]:
        engine = self.engine
        engine.batches.append([r.key for r in self.rows])
        engine.hold.wait(30)
        if engine.permits is not None:
            engine.permits.acquire(timeout=30)
        done, keep = [], []
        for row in self.rows:
            reason = self._advance(row)
            if reason is None:
                keep.append(row)
            else:
                done.append((row.tag, Generation(tuple(row.ids), reason,
                                                 steps=engine._scores(row.ids, row.request.top_k))))
        self.rows = keep
        return done

    def _advance(self, row: _Row) -> str | None:
        """One token for the row; -> why it ends, or None."""
        req = row.request
        if req.cancel is not None and req.cancel.is_set():
            return "abort"
        n = len(row.ids)
        tok = row.script[n] if n < len(row.script) else self.engine.filler
        row.ids.append(tok)
        if req.on_ids is not None:
            req.on_ids([tok])
        if tok in self.engine.info.stop_ids:
            return "stop"
        return "length" if len(row.ids) >= req.max_new_tokens else None

    def clear(self) -> list[Any]:
        tags = [r.tag for r in self.rows]
        self.rows = []
        return tags

    def close(self) -> None:
        self.rows = []
