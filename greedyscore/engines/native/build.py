"""Building the kernels: kernels/*.c compiled into one shared library per (sources, compiler,
target, CPU) in $GREEDYSCORE_CACHE/kernels/, loaded with ctypes.

Why ctypes and plain C rather than a torch C++ extension: they compile fast (no torch headers,
no ninja), and their OpenMP binds to the libgomp torch has loaded, so torch's thread count applies
(a compiler with another OpenMP, clang's libomp say, would bring a second thread pool). The
compiler is $CC, else gcc or cc. A library built for a -march other than native is first called
in a child process: built for instructions this CPU lacks, it would kill its caller.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from .kernel import Kernel

KERNELS = Path(__file__).with_name("kernels")
SOURCES = ("linear.c", "llama_step.c", "attention.c")  # + linear.h, which all include
MARCH_ENV = "GREEDYSCORE_CPU_MARCH"

_lock = threading.Lock()
_built: dict[tuple, tuple[Kernel | None, str]] = {}


def march() -> str:
    """The compiler's -march target: $GREEDYSCORE_CPU_MARCH, default native (this CPU)."""
    return os.environ.get(MARCH_ENV, "").strip() or "native"


def flags(target: str) -> tuple[str, ...]:
    # -ffp-contract=off: only the kernel's explicit fused multiply-adds are fused, the same in every tile
    return ("-O3", f"-march={target}", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC")


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def library_path(cc: str, target: str) -> Path:
    """Where the library of these sources built by `cc` for `target` on this CPU lives (its gate's
    decisions beside it, engines/native/gate.py): a new source, compiler, target or CPU is a new file."""
    from ...models import cache_dir

    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    sources = [p.read_text() for p in sorted(KERNELS.iterdir()) if p.suffix in (".c", ".h")]
    key = hashlib.sha256("\0".join([*sources, cc, version, " ".join(flags(target)), _cpu_key()])
                         .encode()).hexdigest()[:16]
    return cache_dir() / "kernels" / f"{re.sub(r'[^A-Za-z0-9._-]', '_', target)}-{key}.so"


def _cpu_key() -> str:
    from ...cpu import cpu_flags

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return " ".join(sorted(cpu_flags(text)))


def _build(cc: str, target: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.stem}.{os.getpid()}.tmp.so")
    try:
        subprocess.run([cc, *flags(target), "-o", str(tmp), *(str(KERNELS / s) for s in SOURCES), "-lm"],
                       check=True, capture_output=True, text=True, timeout=120)
        if target != "native":
            _probe(tmp, target)
        tmp.replace(out)  # atomic: another process may be building the same file
    finally:
        tmp.unlink(missing_ok=True)


_PROBE = """import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
x, w, y = (ctypes.c_float * 64)(), (ctypes.c_float * 2048)(), (ctypes.c_float * 128)()
lib.gs_linear_f32(x, w, None, y, ctypes.c_int64(2), ctypes.c_int64(32), ctypes.c_int64(64))
"""


def _probe(path: Path, target: str) -> None:
    """Call the library once in a child process (Python without torch)."""
    done = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=60)
    if done.returncode:
        why = f"signal {-done.returncode}" if done.returncode < 0 else (done.stderr.strip().splitlines() or ["?"])[-1]
        raise OSError(f"built for -march={target}, it does not run on this CPU ({why})")


def built(target: str | None = None) -> tuple[Kernel | None, str]:
    """(the kernel built for `target` (default `march()`), "") or (None, why not): built on first
    use, once per process; a failure is said once on stderr."""
    target = target or march()
    from ...models import cache_dir

    cc = compiler()
    key = (target, cc, str(cache_dir()))
    with _lock:
        if key not in _built:
            _built[key] = _load(cc, target)
        return _built[key]


def kernel(target: str | None = None) -> Kernel | None:
    """The kernel built for `target` (default: $GREEDYSCORE_CPU_MARCH or native), whether or not
    the gate would use it (tests of its numerics, and unpickling a model laid out with it)."""
    return built(target)[0]


def _load(cc: str | None, target: str) -> tuple[Kernel | None, str]:
    if cc is None:
        print("greedyscore: no C compiler found: decoding on the CPU uses torch's matrix products "
              "(install gcc for the C kernel, used where it measures faster)", file=sys.stderr, flush=True)
        return None, "no C compiler"
    try:
        path = library_path(cc, target)
        if not path.exists():
            _build(cc, target, path)
        return Kernel(ctypes.CDLL(str(path)), path, target), ""
    except (OSError, subprocess.SubprocessError) as ex:
        lines = (getattr(ex, "stderr", "") or str(ex)).strip().splitlines() or [type(ex).__name__]
        detail = next((line for line in lines if "error" in line.lower()), lines[0])[:200]
        print(f"greedyscore: could not build the CPU kernel for -march={target} ({detail}); using torch's "
              "matrix products", file=sys.stderr, flush=True)
        return None, f"could not build ({detail})"
