"""Pure maths on logits: what a token's probability is, and the per-reply numbers.

Every score is a float32 log-softmax of the engine's *raw* logits over the full vocabulary
(before any penalty, temperature or top-k): the model's true probability, which LMDeploy's greedy
path (top_k=1 -> logprob 0.0) does not give. Logits are consumed in chunks of rows, so extra
memory is O(chunk x vocab), never O((prompt + reply) x vocab).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from .stats import is_near_tie
from .types import Alternative, ScoredToken

ENTROPY_EXACT = 1e-6  # an entropy interval narrower than this (nats) is a number
CHUNK_ROWS = 16  # rows of [vocab] scored at once: 16 x 49k x 4 B = 3 MB per temporary


@dataclass(frozen=True)
class StepScores:
    """Scores of n chosen tokens, one row per step; tensors stay in this layer."""

    logprob: torch.Tensor  # [n] float32, log p(chosen)
    rank: torch.Tensor  # [n] int64, 1 = most likely
    entropy: torch.Tensor  # [n] float32, nats
    margin: torch.Tensor  # [n] float32, p_top1 - p_top2
    top_ids: torch.Tensor  # [n, k] int64, most likely first
    top_logprobs: torch.Tensor  # [n, k] float32
    # [n] float32: the entropy's upper bound where only the top-k is known (a remote server);
    # then `entropy` is the lower bound. Equal to `entropy` where the full distribution was seen.
    entropy_max: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.entropy_max is None:
            object.__setattr__(self, "entropy_max", self.entropy)

    def __len__(self) -> int:
        return int(self.logprob.shape[0])

    def slice(self, start: int, stop: int) -> StepScores:
        """Rows start..stop-1 (e.g. one request's steps out of a batch)."""
        return StepScores(*(t[start:stop] for t in self._fields()))

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return (self.logprob, self.rank, self.entropy, self.margin, self.top_ids, self.top_logprobs,
                self.entropy_max)

    @staticmethod
    def cat(parts: Sequence[StepScores]) -> StepScores:
        """Concatenate along steps. Example: StepScores.cat([a, b]) has len(a) + len(b) rows."""
        cols = zip(*(p._fields() for p in parts))
        return StepScores(*(torch.cat(list(c)) for c in cols))


def score_rows(logits: torch.Tensor, chosen: torch.Tensor, top_k: int) -> StepScores:
    """Score one chunk: logits [c, vocab] (any dtype), chosen [c] -> StepScores of c rows; rank =
    1 + the tokens strictly more likely (ties share a rank).

    Example: score_rows(torch.tensor([[0., 0., 1.]]), torch.tensor([2]), 2).rank -> tensor([1])
    """
    lp = torch.log_softmax(logits.float(), dim=-1)  # [c, vocab]
    chosen = chosen.to(lp.device).long().view(-1, 1)
    chosen_lp = lp.gather(1, chosen)  # [c, 1]
    rank = (lp > chosen_lp).sum(dim=-1) + 1
    top_lp, top_ids, entropy = _top_and_entropy(lp, top_k)
    top_p = top_lp.exp()
    margin = top_p[:, 0] - top_p[:, 1]
    return StepScores(
        logprob=chosen_lp.squeeze(1).cpu(),
        rank=rank.cpu(),
        entropy=entropy.cpu(),
        margin=margin.cpu(),
        top_ids=top_ids[:, :top_k].cpu(),
        top_logprobs=top_lp[:, :top_k].cpu(),
    )


def _top_and_entropy(lp: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From log-probs [c, vocab]: the top max(k, 2) log-probs and ids (the margin needs two), entropy."""
    entropy = -(lp.exp() * lp).nan_to_num(0.0).sum(dim=-1)
    top_lp, top_ids = lp.topk(min(max(int(top_k), 2), lp.shape[-1]), dim=-1)
    return top_lp, top_ids, entropy


def summarise_rows(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a greedy step's scores need of its row, computed where the logits are (a GPU: nothing
    is copied or waited for): logits [c, vocab] -> float32 top max(k, 2) log-probs [c, k'], their
    ids [c, k'], entropy [c]. `greedy_steps` turns rows of these into StepScores.

    Example: summarise_rows(torch.tensor([[0., 0., 1.]]), 1)[1] -> tensor([[2, 0]])
    """
    return _top_and_entropy(torch.log_softmax(logits.float(), dim=-1), top_k)


def align_greedy(top_lp: torch.Tensor, top_ids: torch.Tensor, chosen: Sequence[int],
                 prefer: int | None = None) -> int | None:
    """The offset in m >= n summarised rows at which each of the n greedy picks is its row's most
    likely token (or tied with it): `prefer` where it fits, else the only one; None if none or several.

    A sampler can see rows that yield no reply token (chunked-prefill rows before it, a step run
    ahead after it), so the offset is found, not assumed; `prefer` settles e.g. a repeated token.
    Example: align_greedy(lp, ids_with_argmax([7, 3, 5, 9]), [3, 5]) -> 1
    """
    n, m = len(chosen), int(top_ids.shape[0])
    want = torch.tensor([int(c) for c in chosen], dtype=torch.long).view(-1, 1)

    def fits(o: int) -> bool:
        ids, lp = top_ids[o : o + n], top_lp[o : o + n]
        hit = ids == want
        tied = torch.where(hit, lp, torch.tensor(-math.inf)).amax(dim=1) >= lp[:, 0]
        return bool((hit.any(dim=1) & tied).all())

    if prefer is not None and 0 <= prefer <= m - n and fits(prefer):
        return prefer
    found = [o for o in range(m - n + 1) if fits(o)]
    return found[0] if len(found) == 1 else None


def greedy_steps(top_lp: torch.Tensor, top_ids: torch.Tensor, entropy: torch.Tensor, chosen: Sequence[int],
                 top_k: int, prefer: int | None = None) -> StepScores | None:
    """StepScores of greedy picks from rows summarised while generating (`summarise_rows`, on the
    CPU now): each pick is its row's most likely token (rank 1, its log-prob the row's top one);
    None when the picks cannot be placed in the rows (`align_greedy`): then rescore.

    Example: greedy_steps(*summarise_rows(logits, 5), chosen=[int(logits[0].argmax())], top_k=5)
    """
    if not chosen:
        return empty_scores(top_k)
    o = align_greedy(top_lp, top_ids, chosen, prefer)
    if o is None:
        return None
    n = len(chosen)
    top_lp, top_ids, entropy = top_lp[o : o + n], top_ids[o : o + n], entropy[o : o + n]
    top_p = top_lp.exp()
    return StepScores(
        logprob=top_lp[:, 0].clone(),  # the pick ties the top one (align_greedy checked)
        rank=torch.ones(n, dtype=torch.long),
        entropy=entropy.clone(),
        margin=top_p[:, 0] - top_p[:, 1],
        top_ids=top_ids[:, :top_k].long().clone(),
        top_logprobs=top_lp[:, :top_k].clone(),
    )


def score_chunks(chunks: Iterable[torch.Tensor], chosen: torch.Tensor, top_k: int) -> StepScores:
    """Score logits that arrive in row chunks ([c_i, vocab], sum c_i = len(chosen))."""
    parts, start = [], 0
    for chunk in chunks:
        stop = start + chunk.shape[0]
        parts.append(score_rows(chunk, chosen[start:stop], top_k))
        start = stop
    if start != len(chosen):
        raise ValueError(f"got logits for {start} positions, expected {len(chosen)}")
    if not parts:
        return empty_scores(top_k)
    return StepScores.cat(parts)


def score_logits(logits: torch.Tensor, chosen: torch.Tensor, top_k: int) -> StepScores:
    """Score a whole [n, vocab] tensor, CHUNK_ROWS rows at a time."""
    return score_chunks(logits.split(CHUNK_ROWS), chosen, top_k)


def empty_scores(top_k: int) -> StepScores:
    z = torch.zeros(0)
    return StepScores(z, z.long(), z, z, torch.zeros(0, top_k).long(), torch.zeros(0, top_k))


def build_tokens(
    ids: Sequence[int],
    scores: StepScores,
    texts: Sequence[tuple[str, int]],
    is_special: Callable[[int], bool],
    display: Callable[[int], str],
    rescored: StepScores | None = None,
    tolerance: float = 1e-3,
) -> list[ScoredToken]:
    """Turn tensors into ScoredTokens (the boundary where tensors become lists).

    With `rescored` (verification), a token is a near tie when rescoring ranks it below 1
    or its probability differs by more than `tolerance`.
    """
    n = len(ids)
    if len(scores) != n or len(texts) != n or (rescored is not None and len(rescored) != n):
        raise ValueError(f"length mismatch: ids={n} scores={len(scores)} texts={len(texts)}")
    logprob = scores.logprob.tolist()
    rank = scores.rank.tolist()
    entropy = scores.entropy.tolist()
    entropy_max = scores.entropy_max.tolist()
    margin = scores.margin.tolist()
    top_ids = scores.top_ids.tolist()
    top_p = scores.top_logprobs.exp().tolist()
    r_lp = rescored.logprob.tolist() if rescored is not None else None
    r_rank = rescored.rank.tolist() if rescored is not None else None
    out = []
    for i, tok in enumerate(ids):
        prob = math.exp(logprob[i])
        extra: dict = {}
        if r_lp is not None and r_rank is not None:
            rp = math.exp(r_lp[i])
            extra = dict(
                rescored_prob=rp,
                rescored_rank=int(r_rank[i]),
                near_tie=is_near_tie(prob, rp, int(r_rank[i]), tolerance),
            )
        out.append(
            ScoredToken(
                id=int(tok),
                text=texts[i][0],
                special=bool(is_special(tok)),
                prob=prob,
                logprob=float(logprob[i]),
                rank=int(rank[i]),
                entropy=float(entropy[i]),
                entropy_max=float(entropy_max[i]) if entropy_max[i] - entropy[i] > ENTROPY_EXACT else None,
                margin=float(margin[i]),
                top=tuple(Alternative(int(a), display(int(a)), float(p))
                          for a, p in zip(top_ids[i], top_p[i]) if a >= 0),  # -1: a server's short list
                joined=texts[i][1],
                **extra,
            )
        )
    return out


# |Δp| an engine's own 16-bit logprobs may show against the float32 rescoring (decode vs prefill
# arithmetic, 16-bit log-softmax; benchmarks/bench_engine_logprobs.py); float16 shares bfloat16's bound
# until a GPU measures it. An offset error moves p far more.
ENGINE_LOGPROB_TOLERANCE = {"bfloat16": 0.1, "float16": 0.1}


def compare_engine_logprobs(
    engine_logprobs: Sequence[dict[int, float]], token_ids: Sequence[int], steps: StepScores, tol: float
) -> list[str]:
    """Where an engine's own logprob of each chosen token disagrees with ours: compared as
    probabilities (|Δp| > tol), so fp16 noise on unlikely tokens is not flagged; a missing id is.
    Example: compare_engine_logprobs([{5: -0.1}], [5], steps_with_logprob_minus_0_1, 1e-3) -> []
    """
    if len(steps) != len(token_ids):
        raise ValueError(f"length mismatch: ids={len(token_ids)} scores={len(steps)}")
    ours = steps.logprob.tolist()
    notes = []
    for i, tok in enumerate(token_ids):
        row = engine_logprobs[i] if i < len(engine_logprobs) else None
        engine_lp = None if row is None else row.get(int(tok))
        if engine_lp is None:
            notes.append(f"token {i} (id {tok}): the engine gave no logprob for it")
            continue
        p_engine, p_ours = math.exp(engine_lp), math.exp(ours[i])
        if abs(p_engine - p_ours) > tol:
            notes.append(f"token {i} (id {tok}): engine p={p_engine:.6f} vs rescored p={p_ours:.6f}")
    if len(engine_logprobs) > len(token_ids):
        notes.append(f"the engine gave {len(engine_logprobs)} logprob rows for {len(token_ids)} tokens")
    return notes
