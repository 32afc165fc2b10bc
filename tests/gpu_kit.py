"""The GPU kit (`make gpu-kit`): the cp312 wheels the device image lacks for LMDeploy's PyTorch
engine path, in one folder that travels with a device call (under 60 MiB).

The device image (Python 3.12, torch 2.11+cu130, transformers 5.17; no registry) has no
lmdeploy. Its 0.18.0 wheel is 107 MB, 364 MB of it unpacked being TurboMind's binary (built for
CUDA 12, which the image's CUDA 13 will likely not load) and 18 MB a static xgrammar library:
`repack` drops both, keeping a 1.7 MB wheel. WHEELS are the pure-Python (or abi3) packages the
import path needs and the image lacks, found by importing `lmdeploy.pipeline`,
`lmdeploy.pytorch.engine.engine` and `.model_agent` in a Python 3.12 venv holding the image's
packages and nothing else, adding what failed, until none did.

    python tests/gpu_kit.py DIR      # download and repack into DIR, then a dry-run install for 3.12
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

LMDEPLOY = "lmdeploy==0.18.0"
DROPPED = ("lmdeploy/turbomind/_turbomind", "lmdeploy/turbomind/lib64/libxgrammar.a")
WHEELS = (
    "mmengine-lite==0.10.7", "addict==2.4.0", "yapf==0.43.0", "termcolor==3.3.0", "platformdirs==4.14.9",
    "tomli==2.5.0", "pybase64==1.5.1", "pyzmq==27.3.0", "xgrammar==0.2.9", "apache-tvm-ffi==0.1.11",
    "shortuuid==1.0.13", "pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux_2_5_x86_64", "manylinux1_x86_64")
LIMIT_BYTES = 60 * 2**20


def pip(*args: str) -> None:
    """pip for the device's Python (3.12, x86-64 manylinux): wheels only, no dependencies."""
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", *args[:1], "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, *args[1:]], check=True)


def download(specs: tuple[str, ...], into: Path) -> None:
    pip("download", "-d", str(into), *specs)


def repack(wheel: Path, out: Path) -> Path:
    """`wheel` without the DROPPED files, its RECORD rewritten to match (pip checks it)."""
    target = out / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.startswith(DROPPED):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not line.startswith(DROPPED)).encode()
            dst.writestr(info, data)
    return target


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    full = out / "full"
    download((LMDEPLOY,), full)
    for wheel in full.glob("lmdeploy-*.whl"):
        repack(wheel, out)
        wheel.unlink()
    full.rmdir()
    download(WHEELS, out)
    size = sum(p.stat().st_size for p in out.glob("*.whl"))
    if size > LIMIT_BYTES:
        sys.exit(f"gpu_kit: the kit is {size / 2**20:.1f} MiB, over the {LIMIT_BYTES / 2**20:.0f} MiB a device "
                 "call carries")
    # the rehearsal of the device's install: every wheel installable there, offline, none twice
    wheels = sorted(str(p) for p in out.glob("*.whl"))
    pip("install", "--dry-run", "--no-index", "--ignore-installed", "--target", str(out / "dry-run"), *wheels)
    print(f"gpu_kit: {len(wheels)} wheels, {size / 2**20:.1f} MiB in {out}, installable offline on Python 3.12")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".gpu-kit"))
