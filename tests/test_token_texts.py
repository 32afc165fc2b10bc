"""Byte-faithful token texts, incrementally, against tokenizers built here: a synthetic byte-level
one and a SentencePiece-style one with byte fallback (`<0xNN>` tokens, a leading "▁" for spaces)."""

from __future__ import annotations

import pytest

from greedyscore.detokenize import Detokenizer, token_texts
from greedyscore.stats import reply_stats

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


# --- SentencePiece with byte fallback, built with the tokenizers library ----------------------------
WORDS = ["▁Hello", "▁world", "▁the", "▁a", "▁is", "He", "llo", "▁", "!", ",", ".", "▁你", "好", "▁ok",
         "▁leading", "▁space", "a", "b", "c", "é"]
SP_TEXTS = ["Hello world", "你好，世界", "🍎🍌 ok", " leading space", "a\nb\tc", "Hello 你好 🌍!", "👍🏽 ok",
            "é" * 3 + " 🇫🇷"]


@pytest.fixture(scope="module")
def sp():
    """A Llama-2-style tokenizer: Unigram with byte_fallback, "▁" for spaces, a decoder that turns
    <0xNN> runs back into bytes and strips the first leading space."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    from greedyscore.engines.hf_text import HFTokenizer

    pieces = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)] + [(f"<0x{b:02X}>", -10.0) for b in range(256)]
    pieces += [(w, -2.0 - i / 100) for i, w in enumerate(WORDS)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")

    return HFTokenizer(hf)


@pytest.mark.parametrize("text", SP_TEXTS)
def test_sentencepiece_byte_fallback_texts_join_exactly(sp, text):
    _, ids = sp.text_ids(text)
    assert any(sp.hf.convert_ids_to_tokens(i).startswith("<0x") for i in ids) or text.isascii()
    eos = sp.hf.eos_token_id
    out = token_texts([*ids, eos], sp.decode, sp.is_special)
    reply = sp.decode(ids)
    assert reply.strip() == text.strip()
    assert "".join(t for t, _ in out[:-1]) == reply
    assert out[-1] == ("</s>", 0)
    assert all("\ufffd" not in t for t, _ in out)
    for k, (t, joined) in enumerate(out):
        if joined:
            assert all(out[j][0] == "" for j in range(k - joined, k)) and t


def test_sentencepiece_byte_tokens_display_as_bytes(sp):
    _, ids = sp.text_ids("你好，世界")
    byte_ids = [i for i in ids if sp.hf.convert_ids_to_tokens(i).startswith("<0x")]
    assert [sp.display(i) for i in byte_ids[:3]] == ["\\xef", "\\xbc", "\\x8c"]


@pytest.mark.parametrize("text", SP_TEXTS)
def test_incremental_pushes_equal_the_whole(sp, text):
    """What streaming emits token by token is what the finished reply holds."""
    _, ids = sp.text_ids(text)
    d = Detokenizer(sp.decode, sp.is_special)
    streamed = "".join(d.push(i)[0] for i in ids)
    assert d.finish() == token_texts(ids, sp.decode, sp.is_special)
    assert streamed == d.text == sp.decode(ids)


def test_windows_start_on_character_boundaries():
    """A long run of byte tokens (emoji after emoji): each window starts where a character
    started, so a byte-fallback decoder never sees half a character at the window's start."""
    text = "🍎🍌🍇🍉🍓🍒🍑🥝 " * 3
    pieces = byte_tokens(text, 1)
    vocab = {i: b for i, b in enumerate(pieces)}
    starts: list[bytes] = []
    decode = make_decode(vocab)

    def watching(ids):
        if ids:
            starts.append(vocab[ids[0]])
        return decode(ids)

    out = token_texts(list(vocab), watching, lambda i: False)
    assert "".join(t for t, _ in out) == text
    assert all(b[0] < 0x80 or b[0] >= 0xC0 for b in starts)  # never a UTF-8 continuation byte
