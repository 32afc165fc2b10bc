"""The CPU accelerator: C kernels for a decode step's matrix products (kernels/linear.c), a whole
Llama decode step (kernels/llama_step.c) and a prefill's causal attention (kernels/attention.c),
used by the transformers engine on a CPU only where they measure faster than torch here.

One entry point: `accelerator(precision)` -> the Kernel to lay the model out for, or None (torch's
own products then); `decision(precision)` says why, with the times.

- build.py: compiled once for `-march=$GREEDYSCORE_CPU_MARCH` (default native) into
  $GREEDYSCORE_CACHE/kernels/; no compiler or a failed build: one message, and torch.
- gate.py: timed once against the torch path it would replace, used only where it wins;
  GREEDYSCORE_NATIVE=1 uses it regardless, =0 never builds it.
- kernel.py: the ctypes calls, every shape, dtype and stride checked, and the packed layout.
"""

from __future__ import annotations

import os
import subprocess
import threading

import torch

from . import gate
from .build import MARCH_ENV, built, compiler, kernel, library_path, march
from .gate import FORCE_ENV, Decision
from .kernel import Kernel, pack, packed_shape, unpack

__all__ = ["Decision", "Kernel", "accelerator", "decision", "help_text", "kernel", "pack", "packed_shape", "unpack"]

_lock = threading.Lock()
_chosen: dict[tuple, tuple[Kernel | None, Decision]] = {}


def accelerator(precision: str = "float32") -> Kernel | None:
    """The kernel where the engine should use it for weights of this precision ("float32" or
    "bfloat16") on this machine, else None: built, measured (once per build) and said on first use."""
    return _choice(precision)[0]


def decision(precision: str = "float32") -> Decision:
    """Why `accelerator(precision)` is what it is, with the measured times."""
    return _choice(precision)[1]


def _choice(precision: str) -> tuple[Kernel | None, Decision]:
    if precision not in gate.DTYPES:
        raise ValueError(f"the CPU kernel takes float32 or bfloat16 weights, not {precision}")
    from ...models import cache_dir

    target, force = march(), gate.forced()
    key = (precision, target, force, compiler(), str(cache_dir()), torch.get_num_threads())
    with _lock:
        if key not in _chosen:
            k, why_not = (None, "") if force in gate.OFF else built(target)
            d = gate.choose(k, why_not, precision, target)
            _chosen[key] = (k if d.used else None, d)
        return _chosen[key]


def help_text() -> str:
    """--help's words: how the kernel is chosen, and what the gate decided on this machine (read
    from the cache: nothing is built or timed here)."""
    text = ("On a CPU the transformers engine decodes in greedyscore's C kernel only where it measures faster "
            f"than torch: built at the first load (gcc or $CC, -march=${MARCH_ENV}, default native) and timed "
            "against torch on decode steps of a test model, the decision kept with the build. "
            f"{FORCE_ENV}=1 uses it regardless, =0 never.")
    cc, target = compiler(), march()
    if gate.forced() in gate.OFF + gate.ON:
        return f"{text} Here {FORCE_ENV}={os.environ[FORCE_ENV]}."
    if cc is None:
        return f"{text} Here: no C compiler found."
    try:
        library = library_path(cc, target)
    except (OSError, subprocess.SubprocessError):
        return text
    here = [gate.cached(library, p, target) for p in gate.DTYPES]
    seen = [f"{d.precision}: {'used' if d.used else 'not used'} ({d.kernel_ms:.1f} vs torch {d.torch_ms:.1f} ms per "
            "test step)" for d in here if d is not None]
    return f"{text} Here (-march={target}): " + ("; ".join(seen) if seen else "not measured yet") + "."
