"""Per-step divergence of two scorings of one text that share a tokenizer: at every token, KL(A || B)
over the whole vocabulary, the top-k overlap, and whether the greedy choices differ.

The scores alone cannot give this (a scoring keeps only the top-k of each row), so both sides' raw
logit rows are read again through `engine.logits`: each side's rows are pulled on its own Service's
scheduler thread (where its model work belongs), at most CHUNK rows at a time, and compared as they
come. No [n, vocab] tensor is held on either side, whatever the length of the text.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import torch

from .align import Divergence, Step
from .engines.base import Engine
from .errors import Unsupported
from .scoring import CHUNK_ROWS
from .service import Service
from .types import ScoredReply

CHUNK = 64  # rows pulled from a side per call on its scheduler thread: 64 x 49k x 4 B = 12.5 MB


@torch.inference_mode()
def step_rows(logits_a: torch.Tensor, logits_b: torch.Tensor, k: int) -> tuple[list[float], list[float],
                                                                              list[int], list[int]]:
    """Aligned raw logit rows [c, vocab] of A and B -> (KL(A || B) per row in nats, in float64 from both
    log-softmaxes; top-k overlap |top-k A & top-k B| / k; argmax of A; argmax of B).

    Example: step_rows(torch.tensor([[0., 1.]]), torch.tensor([[0., 1.]]), 1) -> ([0.0], [1.0], [1], [1])
    """
    lpa = torch.log_softmax(logits_a, dim=-1, dtype=torch.float64)
    lpb = torch.log_softmax(logits_b, dim=-1, dtype=torch.float64)
    pa = lpa.exp()
    kl = (pa * (lpa - lpb)).sum(dim=-1)
    bad = kl.isnan()  # 0 x -inf: an id A rules out (a -inf logit) counts 0 log 0 = 0, whatever B says
    if bad.any():
        pa, lpa, lpb = pa[bad], lpa[bad], lpb[bad]
        kl[bad] = torch.where(pa > 0, pa * (lpa - lpb), torch.zeros((), dtype=torch.float64)).sum(dim=-1)
    k = min(k, logits_a.shape[-1])
    top_a, top_b = logits_a.topk(k, dim=-1).indices, logits_b.topk(k, dim=-1).indices
    shared = (top_a[:, :, None] == top_b[:, None, :]).any(dim=-1).sum(dim=-1)
    return (kl.tolist(), (shared.double() / k).tolist(), logits_a.argmax(dim=-1).tolist(),
            logits_b.argmax(dim=-1).tolist())


def _chunks(engine: Engine, ids: list[int], start: int) -> Generator[torch.Tensor, None, None]:
    """The engine's chunks, lazily: its work (and a refusal) happens at the first `next`, on whichever
    thread pulls; closing this generator closes the engine's (whose frame holds its KV cache)."""
    yield from engine.logits(ids, start)


def _pull(chunks: Iterator[torch.Tensor], rows: int) -> list[torch.Tensor]:
    """At least `rows` rows (fewer at the end), run on the engine's scheduler thread: float32 on the CPU."""
    got, n = [], 0
    while n < rows and (chunk := next(chunks, None)) is not None:
        got.append(chunk.to("cpu", torch.float32))
        n += len(chunk)
    return got


class _Rows:
    """One side's logit rows at positions start .. len(ids) - 1, handed out n at a time, whatever
    chunk sizes the engine yields them in."""

    def __init__(self, service: Service, ids: list[int], start: int) -> None:
        self.service = service
        self.chunks = _chunks(service.engine, ids, start)
        self.held: list[torch.Tensor] = []

    def take(self, n: int) -> torch.Tensor:
        have = sum(len(c) for c in self.held)
        if have < n:
            self.held += self.service.turns.model(_pull, self.chunks, max(n - have, CHUNK))
            if sum(len(c) for c in self.held) < n:
                raise RuntimeError(f"the engine gave fewer logit rows than the text has tokens ({n} more asked)")
        rows = torch.cat(self.held) if len(self.held) > 1 else self.held[0]
        self.held = [rows[n:]] if len(rows) > n else []
        return rows[:n]

    def close(self) -> None:
        self.chunks.close()


def undefined_reason(a: ScoredReply, b: ScoredReply, vocab_a: int, vocab_b: int) -> str:
    """Why the two scorings have no per-step divergence ("" when they have one)."""
    ids_a, ids_b = [t.id for t in a.tokens], [t.id for t in b.tokens]
    view = "the span view compares them on characters"
    if len(ids_a) != len(ids_b):
        return f"per-step divergence needs one tokenizer: A splits the text into {len(ids_a)} tokens, " \
               f"B into {len(ids_b)}; {view}"
    if ids_a != ids_b:
        return f"per-step divergence needs one tokenizer: A and B split the text into {len(ids_a)} tokens each, " \
               f"but different ones; {view}"
    if vocab_a != vocab_b:
        return f"per-step divergence needs one vocabulary: A's has {vocab_a:,} ids, B's {vocab_b:,}; {view}"
    if not ids_a:
        return "no tokens to compare"
    return ""


def divergence(service_a: Service, a: ScoredReply, service_b: Service, b: ScoredReply,
               k: int) -> tuple[Divergence | None, str]:
    """-> (the per-step divergence of B from A along the text, "") or (None, why it is not defined).

    Each side's rows are those that scored it: after its own context (`prompt_token_ids`), row i
    predicts the text's token i."""
    why = undefined_reason(a, b, service_a.info.vocab_size, service_b.info.vocab_size)
    if why:
        return None, why
    text = [t.id for t in a.tokens]
    sides: list[_Rows] = []
    try:
        for service, reply in ((service_a, a), (service_b, b)):
            context = list(reply.prompt_token_ids)
            sides.append(_Rows(service, [*context, *text[:-1]], len(context) - 1))
        return _compare_rows(sides[0], sides[1], len(text), k, service_a, service_b), ""
    except Unsupported as ex:
        return None, f"per-step divergence is not available here: {ex}; the span view compares the scores"
    finally:
        for side in sides:
            side.close()


def _compare_rows(rows_a: _Rows, rows_b: _Rows, n: int, k: int, service_a: Service, service_b: Service) -> Divergence:
    """The steps of n aligned rows, CHUNK_ROWS at a time (float64 temporaries of that many rows)."""
    kl: list[float] = []
    overlap: list[float] = []
    argmax_a: list[int] = []
    argmax_b: list[int] = []
    notes: tuple[str, ...] = ()
    vocab = service_a.info.vocab_size
    for i in range(0, n, CHUNK_ROWS):
        la, lb = rows_a.take(min(CHUNK_ROWS, n - i)), rows_b.take(min(CHUNK_ROWS, n - i))
        if la.shape[-1] != lb.shape[-1]:  # padded rows of two widths: compare the ids the vocabulary has
            notes = (f"the two models' logit rows differ in width ({la.shape[-1]:,} and {lb.shape[-1]:,}): "
                     f"compared over the vocabulary's {vocab:,} ids",)
            la, lb = la[:, :vocab], lb[:, :vocab]
        for out, part in zip((kl, overlap, argmax_a, argmax_b), step_rows(la, lb, k)):
            out += part  # type: ignore[operator]
    show_a, show_b = service_a.tokenizer.display, service_b.tokenizer.display
    steps = tuple(Step(*row, show_a(row[2]), show_b(row[3])) for row in zip(kl, overlap, argmax_a, argmax_b))
    return Divergence(steps, k, notes)
