"""Conversations shared by the oracle, LMDeploy and GPU tests: English, Chinese, multi-turn, code,
emoji, a system message, and markup with whitespace."""

from greedyscore.types import Message

CONVERSATIONS = {
    "english": [Message("user", "What is the capital of France?")],
    "chinese": [Message("user", "你好，请介绍一下你自己")],
    "multi-turn": [
        Message("user", "My name is Ada."),
        Message("assistant", "Nice to meet you, Ada!"),
        Message("user", "What is my name?"),
    ],
    "code": [Message("user", "Write a Python function that adds two numbers.")],
    "emoji": [Message("user", "Reply with three fruit emoji 🍎🍌")],
    "system": [Message("system", "You answer in French."), Message("user", "What is the capital of Italy?")],
    "markup": [Message("user", "Is <b>x</b> < y?\n\nSay yes\tor no.")],
}


def generate(engine, prompt, max_new_tokens: int, top_k: int, on_ids=None, cancel=None):
    """One request through an engine's only generation method, generate_batch."""
    from greedyscore.engines.base import GenerateRequest

    return engine.generate_batch([GenerateRequest(tuple(prompt), max_new_tokens, top_k, on_ids, cancel)])[0]
