"""The GPU kit (`make gpu-kit`): what a device call carries in `.gpu-kit/` (ignored) for `make gpu-check`:
the cp312 wheels the device image lacks for LMDeploy's PyTorch engine path, and a model small enough
to travel that still tells right scores from wrong ones. Kit + the repo's files stay under 60 MiB
(a device call carries 64 MiB in all).

The device image (Python 3.12, torch 2.11+cu130, transformers 5.17; no registry, no hub) has no
lmdeploy and no gguf. lmdeploy 0.18.0's wheel is 107 MB, 364 MB of it unpacked being TurboMind's
binary (built for CUDA 12, which the image's CUDA 13 will likely not load) and 18 MB a static
xgrammar library: `repack` drops both, keeping a 1.7 MB wheel. WHEELS are the pure-Python (or abi3)
packages the import path needs and the image lacks, found by importing `lmdeploy.pipeline`,
`lmdeploy.serve.core.async_engine`, `lmdeploy.pytorch.engine.engine` and `.model_agent` in a Python
3.12 venv holding the image's packages and nothing else, adding what failed, until none did; gguf
(transformers reads a .gguf with it; 5.17 needs >= 0.10) is the one `greedyscore.models` needs.
Importing all 571 modules of lmdeploy (less vl, turbomind, lite and other vendors' backends) there
leaves only ray (multi-GPU executors; one GPU uses 'uni'), tilelang (DeepSeek-V4 and linear-attention
kernels), deep_gemm, flash_attn_interface, dlslime, openai, openai_harmony and fire unmet: none is on
a Llama model's path on one GPU.

The model: the embedded SmolLM2-135M-Instruct (a 94 MB Q4_1 .gguf, 30 layers) cut to its first
LAYERS decoder layers, its token embedding (tied to the output head) re-quantized from Q8_0 to
Q4_0 (16 MB instead of 29). Measured on a CPU (float32, 5 chat prompts, 32 greedy tokens): chosen
p median 0.63, an off-by-one row moves p by a median 0.47, bf16 against float32 |dp| <= 0.05; the
text it writes is degenerate, which a check of scores does not mind. 15 layers are 2 MiB over the
budget; 12 leave near ties (a top-2 gap of 0.001-0.02) on the GPU tests' conversations.

    python tests/gpu_kit.py [DIR]    # download, repack, cut the model into DIR; a dry-run install for 3.12
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LMDEPLOY = "lmdeploy==0.18.0"
DROPPED = ("lmdeploy/turbomind/_turbomind", "lmdeploy/turbomind/lib64/libxgrammar.a")
WHEELS = (
    "mmengine-lite==0.10.7", "addict==2.4.0", "yapf==0.43.0", "termcolor==3.3.0", "platformdirs==4.14.9",
    "tomli==2.5.0", "pybase64==1.5.1", "pyzmq==27.3.0", "xgrammar==0.2.9", "apache-tvm-ffi==0.1.11",
    "shortuuid==1.0.13", "pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0",
    "typing-inspection==0.4.5", "gguf==0.19.0",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux_2_5_x86_64", "manylinux1_x86_64")
LAYERS = 14
EMBEDDING = "Q4_0"
MODEL_NAME = f"SmolLM2-135M-Instruct-L{LAYERS}.gguf"
MIB = 2**20
CALL_BYTES = 64 * MIB  # what one device call carries: the work tree + carried paths
LIMIT_BYTES = 60 * MIB  # the kit + the repo's files, leaving room for what a session adds
WHEELS_MAX_BYTES = 11 * MIB  # the wheels as downloaded (10.2 MiB): main() holds them to it, the size test uses it


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


def truncate_gguf(src: Path, dst: Path, layers: int = LAYERS, embedding: str | None = EMBEDDING) -> Path:
    """`src` (a llama-architecture .gguf) with only its first `layers` decoder layers: every metadata
    field copied (the tokenizer's included) but `<arch>.block_count`, the tensors of later layers left
    out, the token embedding re-quantized to `embedding` (a gguf.quants type; None keeps it)."""
    import gguf

    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch)  # writes general.architecture itself
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = layers if field.name == f"{arch}.block_count" else field.contents()
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub_type)
    Q = gguf.GGMLQuantizationType
    kept = 0
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if parts[0] == "blk" and int(parts[1]) >= layers:
            continue
        kept += parts[0] == "blk" and parts[2] == "attn_q"
        data, kind = tensor.data, tensor.tensor_type
        if tensor.name == "token_embd.weight" and embedding and kind != Q[embedding]:
            data, kind = gguf.quants.quantize(gguf.quants.dequantize(data, kind), Q[embedding]), Q[embedding]
        writer.add_tensor(tensor.name, data, raw_dtype=None if kind == Q.F32 else kind)
    if kept != layers:
        raise ValueError(f"{src.name} has {kept} layers, fewer than the {layers} asked for")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def kit_model(out: Path) -> Path:
    """The kit's model, cut from the embedded model's .gguf into `out`."""
    from greedyscore.models import embedded_gguf

    return truncate_gguf(embedded_gguf(), out / MODEL_NAME)


def repo_bytes(root: Path = ROOT) -> int:
    """What a device call carries of the repo: tracked files and untracked ones git does not ignore."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                           check=True, capture_output=True).stdout.decode().split("\0")
    return sum((root / n).stat().st_size for n in names if n and (root / n).is_file())


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    full = out / "full"
    download((LMDEPLOY,), full)
    for wheel in full.glob("lmdeploy-*.whl"):
        repack(wheel, out)
        wheel.unlink()
    full.rmdir()
    download(WHEELS, out)
    wheels = sorted(out.glob("*.whl"))
    wheel_bytes = sum(p.stat().st_size for p in wheels)
    if wheel_bytes > WHEELS_MAX_BYTES:
        sys.exit(f"gpu_kit: the wheels are {wheel_bytes / MIB:.1f} MiB, over the {WHEELS_MAX_BYTES / MIB:.0f} MiB "
                 "the model's budget assumes (WHEELS_MAX_BYTES): raise it and take layers off the model")
    model = kit_model(out)
    kit = wheel_bytes + model.stat().st_size
    repo = repo_bytes()
    # the rehearsal of the device's install: every wheel installable there, offline, none twice
    pip("install", "--dry-run", "--no-index", "--ignore-installed", "--target", str(out / "dry-run"),
        *map(str, wheels))
    print(f"gpu_kit: {len(wheels)} wheels {wheel_bytes / MIB:.1f} MiB + {model.name} {model.stat().st_size / MIB:.1f} "
          f"MiB = kit {kit / MIB:.1f} MiB in {out}, installable offline on Python 3.12; with the repo's files "
          f"({repo / MIB:.1f} MiB) a device call carries {(kit + repo) / MIB:.1f} of {CALL_BYTES / MIB:.0f} MiB")
    if kit + repo > LIMIT_BYTES:
        sys.exit(f"gpu_kit: kit + repo are {(kit + repo) / MIB:.1f} MiB, over {LIMIT_BYTES / MIB:.0f} MiB")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ".gpu-kit"))
