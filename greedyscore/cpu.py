"""What this CPU can do fast: bfloat16 instructions (for `--dtype bfloat16`)."""

from __future__ import annotations

from pathlib import Path

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
