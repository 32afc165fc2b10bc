"""Text as it enters greedyscore: Unicode text or a clear refusal, decided once for every door.

A Python str can hold lone surrogates (U+D800-U+DFFF), which are not text: JSON's "\\ud800"
decodes to one, and invalid UTF-8 on the command line arrives as U+DC80-U+DCFF (Python's
surrogateescape). No tokenizer takes them and no page or file can encode one, so they are refused
where text comes in (requests, shared documents, the CLI's arguments and files), naming where.
Everything else is kept exactly; bidi controls are made visible when drawn.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import BadInput

SURROGATE_RE = re.compile("[\ud800-\udfff]")


def text_problem(text: str, from_bytes: bool = False) -> str | None:
    """Why `text` is not Unicode text, or None. from_bytes: it was decoded with surrogateescape
    (argv), so U+DC80-U+DCFF stand for bytes that were not UTF-8.

    Example: text_problem("ab\\udcff", from_bytes=True) -> "is not valid UTF-8 (byte 0xff at character 2)"
    """
    m = SURROGATE_RE.search(text)
    if m is None:
        return None
    code = ord(m.group())
    if from_bytes and 0xDC80 <= code <= 0xDCFF:
        return f"is not valid UTF-8 (byte 0x{code - 0xDC00:02x} at character {m.start()})"
    return f"holds a lone surrogate (U+{code:04X} at character {m.start()}), which is not text"


def check_text(text: str, what: str, from_bytes: bool = False) -> str:
    """`text`, or BadInput naming `what` and the first bad character.

    Example: check_text("hi", "the prompt") -> "hi"
    """
    problem = text_problem(text, from_bytes)
    if problem is not None:
        raise BadInput(f"{what} {problem}: send it as UTF-8 text")
    return text


def check_tree(data: Any, what: str) -> None:
    """Every string in a JSON-like tree (keys too) is text: BadInput naming the first one that is not.

    Example: check_tree({"messages": [{"content": "hi"}]}, "the shared result") -> None
    """
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
