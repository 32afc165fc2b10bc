"""Text as it enters greedyscore: Unicode text or a clear refusal naming where, for every door.

Lone surrogates (JSON's "\\ud800", or invalid UTF-8 in argv via surrogateescape) are not text: no
tokenizer takes them and no page or file can encode one. Everything else is kept exactly.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import BadInput

SURROGATE_RE = re.compile("[\ud800-\udfff]")


def check_text(text: str, what: str, from_bytes: bool = False) -> str:
    """`text`, or BadInput naming `what` and the first bad character (from_bytes: decoded with
    surrogateescape, so U+DC80-U+DCFF stand for bytes that were not UTF-8)."""
    m = SURROGATE_RE.search(text)
    if m is None:
        return text
    code = ord(m.group())
    if from_bytes and 0xDC80 <= code <= 0xDCFF:
        problem = f"is not valid UTF-8 (byte 0x{code - 0xDC00:02x} at character {m.start()})"
    else:
        problem = f"holds a lone surrogate (U+{code:04X} at character {m.start()}), which is not text"
    raise BadInput(f"{what} {problem}: send it as UTF-8 text")


def check_tree(data: Any, what: str) -> None:
    """Every string in a JSON-like tree (keys too) is text: BadInput naming the first one that is not."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            check_text(node, f"{what}'s field {path or '(root)'}")
        elif isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, str):
                    check_text(k, f"{what}'s key under {path or '(root)'}")
                stack.append((v, f"{path}.{k}" if path else str(k)))
        elif isinstance(node, list | tuple):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node))
