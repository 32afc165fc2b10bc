"""Shared by the benchmark scripts: a fixed-length engine, machine facts, RESULTS.md sections."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
from dataclasses import replace
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def fixed_length_engine(precision: str = "float32"):
    """The embedded model whose stop ids are replaced by one it never emits (the last vocab id),
    so every run generates exactly max_new_tokens and the methods compare like for like."""
    from greedyscore.engines.transformers import TransformersEngine

    engine = TransformersEngine.load(None, device="cpu", precision=precision)
    engine.info = replace(engine.info, stop_ids=frozenset({engine.model.config.vocab_size - 1}))
    return engine


def filler_prompt(tokenizer, n_tokens: int) -> list[int]:
    """A chat prompt of exactly n_tokens ids (a user message padded with prose, then cut), from an
    engine's tokenizer (`engines.hf_text.HFTokenizer`)."""
    from greedyscore.types import Message

    words = ("the history of the river valley and its towns, markets, bridges and songs " * 400).split()
    head = tokenizer.prompt_ids([Message("system", "Be brief."), Message("user", "Summarise:")])
    if n_tokens < len(head):
        raise ValueError(f"a chat prompt needs at least {len(head)} tokens")
    body = tokenizer.hf(" ".join(words), add_special_tokens=False)["input_ids"]
    end = len(head) - 1 - head[::-1].index(tokenizer.hf.eos_token_id)  # <|im_end|> of the user turn
    return head[:end] + body[: n_tokens - len(head)] + head[end:]


PROSE = "In 1848 the river town built a stone bridge; 你好, traders came with 🍎 and\n\tsalt. "


def scored_prose(service, n_tokens: int, top_k: int):
    """A real n_tokens-token teacher-forced reply (ASCII, CJK, emoji, newlines, tabs) on `service`."""
    from greedyscore.types import Settings

    ids = service.engine.tokenizer.text_ids(PROSE * (n_tokens // 8 + 10))[1][:n_tokens]
    return service.score_text(service.engine.tokenizer.decode(ids), Settings(top_k=top_k))


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads")


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(name: str, body: str, results: Path = RESULTS) -> None:
    """Replace (or add) the section `## name` in RESULTS.md (or `results`), keeping the others."""
    empty = "# Benchmark results\n\nWritten by the scripts in benchmarks/.\n"
    text = results.read_text() if results.exists() else empty
    section = f"## {name}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    results.write_text(text)


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=RESULTS.parent).stdout.strip() or "?"
    except OSError:
        return "?"


def start_vllm():
    """vLLM's CPU server (.venv-vllm) on the embedded model, on a free loopback port; -> (process, URL).
    Stop it with tests/servers.stop."""
    from servers import free_port, start, vllm_command

    from greedyscore.models import EMBEDDED_NAME, resolve_model

    port = free_port()
    cmd, env = vllm_command(resolve_model(None)[1], port, EMBEDDED_NAME)
    print("starting vLLM (1-4 minutes) ...", flush=True)
    url = f"http://127.0.0.1:{port}"
    return start(cmd, f"{url}/v1/models", "bench-vllm", timeout_s=600, env=env), url
