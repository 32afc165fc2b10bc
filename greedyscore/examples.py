"""The demo's examples, chosen by running each on the embedded SmolLM2-135M-Instruct (greedy, 128
tokens): each answers sensibly, except one kept on purpose to show a repetition loop.
tests/test_examples.py re-checks them against the model, so a model change that breaks one shows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    prompt: str
    label: str
    loops: bool = False  # a teaching example: greedy decoding falls into a repetition loop


CHAT_EXAMPLES: tuple[Example, ...] = (
    Example("What is the capital of France?", "What is the capital of France?"),
    Example("用一句话介绍北京。", "用一句话介绍北京。 (Chinese)"),
    Example("What is 12 times 7?", "What is 12 times 7? (a wrong answer: how sure was it?)"),
    Example("List three animals that live in the ocean.", "List three animals that live in the ocean."),
    Example("Give me a haiku about autumn.", "Give me a haiku about autumn. (a repetition loop, on purpose)",
            loops=True),
)

SCORE_EXAMPLES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "北京是中国的首都，也是一座历史悠久的城市。",
    "Paris is the capital of France, and Rome is the capital of Italy.",
)
