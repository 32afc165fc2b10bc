"""Byte-faithful token texts, against a synthetic byte-level tokenizer (an independent model)."""

from __future__ import annotations

import pytest

from greedyscore.scoring import reply_stats, token_texts

SPECIAL = {999: "<|end|>"}


def byte_tokens(text: str, split: int) -> list[bytes]:
    """Cut the UTF-8 bytes of text every `split` bytes: splits characters on purpose."""
    raw = text.encode()
    return [raw[i : i + split] for i in range(0, len(raw), split)]


def make_decode(vocab: dict[int, bytes]):
    def decode(ids):
        return b"".join(vocab[i] if i in vocab else SPECIAL[i].encode() for i in ids).decode("utf-8", "replace")

    return decode


@pytest.mark.parametrize("text", ["hello world", "你好，世界", "🍎🍌 ok", "a\nb\tc", "", "é" * 5, "<b>&amp;</b>"])
@pytest.mark.parametrize("split", [1, 2, 3, 5])
@pytest.mark.parametrize("with_stop", [False, True])
def test_join_exactly_and_no_spurious_replacement(text, split, with_stop):
    pieces = byte_tokens(text, split)
    vocab = {i: b for i, b in enumerate(pieces)}
    ids = list(vocab) + ([999] if with_stop else [])
    out = token_texts(ids, make_decode(vocab), lambda i: i in SPECIAL)
    assert len(out) == len(ids)
    plain = [t for (t, _), i in zip(out, ids) if i not in SPECIAL]
    assert "".join(plain) == text
    assert all("\ufffd" not in t for t, _ in out)
    if with_stop:
        assert out[-1] == ("<|end|>", 0)
    # joined counts the empty tokens just before a character's completing token
    for k, (t, joined) in enumerate(out):
        if joined:
            assert all(out[j][0] == "" for j in range(k - joined, k)) and t


def test_reply_cut_inside_a_character_keeps_the_replacement_the_reply_has():
    vocab = {0: "你".encode()[:2]}
    out = token_texts([0], make_decode(vocab), lambda i: False)
    assert out == [("\ufffd", 0)]


def test_reply_stats_reference():
    s = reply_stats([0.0, -2.0])
    assert s.n_tokens == 2 and s.mean_logprob == -1.0
    assert abs(s.perplexity - 2.718281828) < 1e-6 and abs(s.min_prob - 0.135335283) < 1e-6
