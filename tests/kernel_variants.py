"""The kernel variants the numerics tests run on: this CPU's own build and the AVX2 one
(GREEDYSCORE_CPU_MARCH=x86-64-v3), whichever build here."""

from __future__ import annotations

import pytest

from greedyscore.engines import native

MARCHES = ("native", "x86-64-v3")


def built(march: str) -> native.Kernel:
    """The kernel for `march`: this CPU's must build (gcc is part of the machine); another
    target that does not build or run here is skipped."""
    k = native.kernel(march)
    if k is None and march != "native":
        pytest.skip(f"the kernel does not build or run for -march={march} here")
    assert k is not None, "the kernel must build on this machine (gcc is part of it)"
    return k
