"""What this CPU can do fast: bfloat16 instructions (for `--dtype bfloat16`); where model work must
run so that torch's OpenMP threads keep spinning between a decode step's products."""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# x86: AVX-512 BF16 (Cooper Lake, Zen 4 and later) or AMX (Sapphire Rapids and later); Arm: the BF16 extension
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of /proc/cpuinfo's text ("flags" on x86, "Features" on Arm)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def bf16_instructions(cpuinfo: str | None = None) -> list[str]:
    """This CPU's bfloat16 instruction sets (empty: none, bfloat16 would be emulated and slower)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: nothing to read the flags from
            return []
    return sorted(cpu_flags(cpuinfo) & BF16_FLAGS)


def in_a_thread_of_its_own(fn: Callable[..., T]) -> Callable[..., T]:
    """fn, made to run in a new thread that ends when it returns (its exception raised in the caller).

    Why: torch's OpenMP (libgomp) keeps a pool of worker threads for every thread that ever ran a
    parallel region, for that thread's life. Once the pools together hold more threads than there
    are CPUs, libgomp throttles them all: a worker spins 100 times, not 300,000, before it sleeps on
    a futex, and each of a torch decode step's ~200 small parallel products pays a wake-up. Loading
    a model in the main thread (which never ends) and decoding in the scheduler's is just that; a
    load in a thread that ends leaves no pool behind, and the decoding thread's is then the only one."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> T:
        with ThreadPoolExecutor(1, thread_name_prefix=f"greedyscore-{fn.__name__}") as pool:  # joined on exit
            return pool.submit(fn, *args, **kwargs).result()

    return run
