"""Token ids <-> text through a Hugging Face tokenizer, shared by every engine that has one."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from ..types import Message


class HFTextMixin:
    """prompt_ids / text_ids / decode / is_special / display for an engine whose `hf_tokenizer` is a HF tokenizer."""

    hf_tokenizer: Any

    def _init_text(self, tokenizer: Any) -> None:
        self.hf_tokenizer = tokenizer
        self._special = frozenset(int(i) for i in tokenizer.all_special_ids)
        self.display = lru_cache(maxsize=65536)(self._display)

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The tokenizer's chat template, generation prompt appended (LMDeploy overrides it with its own)."""
        msgs = [{"role": m.role, "content": m.content} for m in messages]
        ids = self.hf_tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                    return_dict=False)
        return [int(i) for i in (ids["input_ids"] if hasattr(ids, "input_ids") else ids)]

    def text_ids(self, text: str) -> tuple[list[int], list[int]]:
        ids = self.hf_tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.hf_tokenizer.bos_token_id
        return ([int(bos)] if bos is not None else []), [int(i) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf_tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special

    def _display(self, token_id: int) -> str:
        text = self.decode([token_id])
        if "\ufffd" not in text:
            return text
        raw = byte_level_bytes(self.hf_tokenizer.convert_ids_to_tokens(token_id))
        return "".join(f"\\x{b:02x}" for b in raw) if raw is not None else text


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of the GPT-2 byte-level alphabet (printable stand-ins for the 256 bytes)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def byte_level_bytes(token: str | None) -> bytes | None:
    """Example: byte_level_bytes("ä½") -> b"\\xe4\\xbd"; None when not a byte-level token."""
    if token is None:
        return None
    table = _unicode_to_byte()
    if token.startswith("<0x") and token.endswith(">") and len(token) == 6:  # SentencePiece byte fallback
        return bytes([int(token[3:5], 16)])
    if all(ch in table for ch in token):
        return bytes(table[ch] for ch in token)
    return None
