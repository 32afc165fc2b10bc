"""Frozen dataclasses that flow between layers: engines -> scoring -> service -> render/CLI.

No torch and no gradio here: the UI and the CLI see only these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

ROLES: tuple[str, ...] = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message:
    """One OpenAI-style chat message."""

    role: str
    content: str


@dataclass(frozen=True)
class Alternative:
    """A candidate token at one step: its id, display text and probability."""

    id: int
    text: str
    prob: float


@dataclass(frozen=True)
class ScoredToken:
    """One token with its true model probability (float32 softmax of raw logits).

    `text` is the token's share of the reply: the texts of non-special tokens join exactly
    to the reply. A token that ends inside a multi-byte character has text "" and the
    completing token carries the whole character (`joined` > 0 counts the tokens before it).
    """

    id: int
    text: str
    special: bool
    prob: float
    logprob: float
    rank: int  # 1 = the most likely token at this step
    entropy: float  # nats, over the full vocabulary (the lower bound when entropy_max is set)
    margin: float  # p_top1 - p_top2
    top: tuple[Alternative, ...]
    joined: int = 0
    # Set where only the top-k was known (a remote server): the entropy lies in [entropy, entropy_max].
    entropy_max: float | None = None
    # Verification (rescoring the generated sequence): None when not verified.
    rescored_prob: float | None = None
    rescored_rank: int | None = None
    near_tie: bool = False


@dataclass(frozen=True)
class ReplyStats:
    """Whole-reply numbers over all scored tokens (the end-of-turn token included)."""

    n_tokens: int
    mean_logprob: float
    perplexity: float
    min_prob: float


@dataclass(frozen=True)
class Timings:
    generate_s: float
    score_s: float


@dataclass(frozen=True)
class CalibrationBin:
    """Positions whose top-1 probability fell in [lo, hi): how sure the model was, how often right."""

    lo: float
    hi: float
    n: int
    confidence: float  # mean top-1 probability (0 when n == 0)
    accuracy: float  # share of positions where the top-1 was the real next token


@dataclass(frozen=True)
class Calibration:
    """Top-1 calibration over teacher-forced positions (see greedyscore/calibration.py)."""

    bins: tuple[CalibrationBin, ...]
    ece: float  # expected calibration error: sum over bins of n/N * |accuracy - confidence|
    brier: float  # mean (top-1 probability - top-1 correct)^2
    n: int
    accuracy: float  # top-1 accuracy over all positions

    def to_json(self) -> dict[str, Any]:
        return {"bins": [asdict(b) for b in self.bins], "ece": self.ece, "brier": self.brier, "n": self.n,
                "accuracy": self.accuracy}


@dataclass(frozen=True)
class ScoredReply:
    """What one chat turn or one teacher-forced scoring gives: text, tokens, numbers."""

    model: str
    backend: str
    text: str
    prompt_token_ids: tuple[int, ...]
    tokens: tuple[ScoredToken, ...]
    stats: ReplyStats
    timings: Timings
    finish_reason: str = "stop"  # "stop" | "length" | "abort" (stopped by the user) | "step" (a path paused)
    verified: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)  # e.g. engine/rescoring disagreements
    score_source: str = ""  # what the scores were computed from, e.g. "float32 logits (cpu), softmax in float32"
    forked_at: int | None = None  # a fork: tokens before this index are the original reply's, this one was swapped
    calibration: Calibration | None = None  # teacher-forced text: how well the top-1 probabilities were calibrated
    chosen: tuple[int, ...] = ()  # a stepped reply: the positions whose token the visitor picked

    def to_json(self) -> dict[str, Any]:
        """The CLI's JSON schema (a stable contract); extra keys may be added, none removed."""
        tokens = []
        for t in self.tokens:
            d = {
                "id": t.id,
                "text": t.text,
                "special": t.special,
                "prob": t.prob,
                "logprob": t.logprob,
                "rank": t.rank,
                "entropy": t.entropy,
                **({"entropy_max": t.entropy_max} if t.entropy_max is not None else {}),
                "margin": t.margin,
                "top": [asdict(a) for a in t.top],
                "joined": t.joined,
            }
            if self.verified:
                d.update(rescored_prob=t.rescored_prob, rescored_rank=t.rescored_rank, near_tie=t.near_tie)
            if self.forked_at is not None:
                d["shared"] = len(tokens) < self.forked_at  # the prefix shared with the original reply
            if self.chosen:
                d["chosen"] = len(tokens) in self.chosen
            tokens.append(d)
        return {
            "model": self.model,
            "backend": self.backend,
            "text": self.text,
            "prompt_token_ids": list(self.prompt_token_ids),
            "tokens": tokens,
            "stats": asdict(self.stats),
            "timings": asdict(self.timings),
            "finish_reason": self.finish_reason,
            "verified": self.verified,
            "notes": list(self.notes),
            "score_source": self.score_source,
            **({"forked_at": self.forked_at} if self.forked_at is not None else {}),
            **({"calibration": self.calibration.to_json()} if self.calibration is not None else {}),
            **({"chosen": list(self.chosen)} if self.chosen else {}),
        }


@dataclass(frozen=True)
class ModelIdentity:
    """Which model produced a result, to tell later whether a re-run can reproduce it."""

    name: str
    backend: str
    weights: str | None  # sha256 of config.json + weight files; None where they are not visible here
    score_source: str
    greedyscore: str  # the version

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TextDelta:
    """Reply text while a turn generates: `delta` is new since the last one, `text` all so far.

    Special tokens are not in it; a character split over tokens arrives whole. An empty delta is
    a heartbeat (nothing new yet), so a consumer gets control back and can stop the stream.
    """

    delta: str
    text: str


@dataclass(frozen=True)
class Settings:
    """Per-request settings, validated by `requests.check_settings`, and by the Service against the engine's context."""

    max_new_tokens: int = 128
    top_k: int = 5
    verify: bool = False
    tolerance: float = 1e-3  # verification: |p_single_pass - p_rescored| above this is flagged


MAX_TOP_K = 20


@dataclass(frozen=True)
class Sampler:
    """A sampler to look through (`sampler.py`): temperature (0 = greedy), top-k (0 = off), top-p (1 = off)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass(frozen=True)
class SamplerEntry:
    """One listed next token: its raw probability, and after each sampler stage (temperature, top-k, top-p)."""

    id: int
    text: str
    raw: float
    stages: tuple[float, ...]

    @property
    def sampled(self) -> float:
        return self.stages[-1]


@dataclass(frozen=True)
class NextToken:
    """The model's next-token distribution after some ids, raw and through a sampler."""

    top: tuple[SamplerEntry, ...]  # the most likely by raw probability
    rest_raw: float  # the mass of every other token
    rest_stages: tuple[float, ...]
    entropy: float  # nats, raw, over the whole vocabulary
    p_greedy: float  # probability that the sampler picks the most likely token
    greedy_id: int
    sampler: Sampler

    def to_json(self) -> dict[str, Any]:
        """The /distribution schema: extra keys may be added, none removed."""
        return {
            "top": [{"id": e.id, "text": e.text, "raw": e.raw, "sampled": e.sampled,
                     "stages": dict(zip(("temperature", "top_k", "top_p"), e.stages))} for e in self.top],
            "rest": {"raw": self.rest_raw, "sampled": self.rest_stages[-1]},
            "entropy": self.entropy,
            "p_greedy": self.p_greedy,
            "greedy_id": self.greedy_id,
            "sampler": asdict(self.sampler),
        }


@dataclass(frozen=True)
class Stepped:
    """A step's outcome: the path so far, scored like any reply, and what the model would say next
    (None once the path has ended on a stop token)."""

    path: ScoredReply
    next: NextToken | None
    # the next token's raw logits row (torch, not in the JSON): another sampler looks through it with no
    # model call; None once the path has ended, or dropped when a later step is taken
    logits: Any = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path.to_json(), "next": self.next.to_json() if self.next is not None else None}
