"""load_engine(backend, model): a registry with lazy imports, so a CPU install never needs lmdeploy."""

from __future__ import annotations

import importlib.util

from ..errors import EngineUnavailable
from .base import Engine, EngineInfo, Generation

BACKENDS = ("auto", "transformers", "lmdeploy", "openai")

__all__ = ["BACKENDS", "Engine", "EngineInfo", "Generation", "load_engine", "pick_backend"]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pick_backend(backend: str) -> str:
    """auto -> lmdeploy when CUDA and lmdeploy are both present, else transformers."""
    if backend not in BACKENDS:
        raise EngineUnavailable(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if _cuda_available() and importlib.util.find_spec("lmdeploy") is not None:
        return "lmdeploy"
    return "transformers"


def load_engine(backend: str = "auto", model: str | None = None, base_url: str | None = None, **options) -> Engine:
    """Load `model` (None: the embedded one, or a server's only model) on `backend` ("openai": the server
    at `base_url`); `options` go to the backend's `load`, so the engine's `info` is final on return."""
    chosen = pick_backend(backend)
    if chosen == "openai":
        if not base_url:
            raise EngineUnavailable("--backend openai needs --base-url, the server's address (e.g. http://host:8000)")
        from .openai import OpenAIEngine

        return OpenAIEngine.load(base_url, model, **options)
    if base_url:
        raise EngineUnavailable("--base-url is for --backend openai (a remote server)")
    if chosen == "lmdeploy":
        from .lmdeploy import LMDeployEngine

        return LMDeployEngine.load(model, **options)
    from .transformers import TransformersEngine

    return TransformersEngine.load(model, **options)
