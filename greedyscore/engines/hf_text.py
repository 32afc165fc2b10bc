"""Token ids <-> text through a Hugging Face tokenizer, shared by every engine that has one
(LMDeploy's with its own chat template)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from ..types import Message


class HFTokenizer:
    """The Tokenizer protocol (`engines.base`) over a Hugging Face tokenizer: its chat template, ids, texts."""

    def __init__(self, hf: Any) -> None:
        self.hf = hf
        self._special = frozenset(int(i) for i in hf.all_special_ids)
        self.display = lru_cache(maxsize=65536)(self._display)

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The tokenizer's chat template, generation prompt appended."""
        msgs = [{"role": m.role, "content": m.content} for m in messages]
        ids = self.hf.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        return [int(i) for i in (ids["input_ids"] if hasattr(ids, "input_ids") else ids)]

    def text_ids(self, text: str) -> tuple[list[int], list[int]]:
        ids = self.hf(text, add_special_tokens=False)["input_ids"]
        bos = self.hf.bos_token_id
        return ([int(bos)] if bos is not None else []), [int(i) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special

    def _display(self, token_id: int) -> str:
        text = self.decode([token_id])
        if "\ufffd" not in text:
            return text
        raw = byte_level_bytes(self.hf.convert_ids_to_tokens(token_id))
        return "".join(f"\\x{b:02x}" for b in raw) if raw is not None else text


class LMDeployTokenizer(HFTokenizer):
    """Prompts templated as 0.18's pipeline does (lmdeploy's chat template and tokenizer)."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine.tokenizer.model.model)  # the transformers tokenizer underneath
        self.chat_template = engine.chat_template  # lmdeploy.model chat template (what the pipeline uses)
        self.lmdeploy = engine.tokenizer  # lmdeploy.tokenizer.Tokenizer

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        prompt = self.chat_template.messages2prompt([{"role": m.role, "content": m.content} for m in messages])
        return [int(i) for i in self.lmdeploy.encode(prompt, add_bos=True)]


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of the GPT-2 byte-level alphabet (printable stand-ins for the 256 bytes)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    moved = [b for b in range(256) if b not in keep]  # the other bytes, stood in for by 256, 257, ...
    return {**{chr(b): b for b in keep}, **{chr(256 + i): b for i, b in enumerate(moved)}}


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
