"""Shared fixtures: one real embedded model for the whole session (loading takes ~2 s)."""

from __future__ import annotations

import sys

import pytest

from greedyscore.engines.transformers import TransformersEngine
from greedyscore.service import Service


@pytest.fixture(scope="session")
def engine() -> TransformersEngine:
    return TransformersEngine.load(None, device="cpu")


@pytest.fixture(scope="session")
def service(engine: TransformersEngine) -> Service:
    return Service(engine)


@pytest.fixture(scope="session")
def app_server():
    """`python app.py` in a subprocess, as a user starts it; -> its URL."""
    from servers import free_port, start, stop

    port = free_port()
    proc = start([sys.executable, "app.py", "--port", str(port), "--concurrency", "16", "--max-queue", "64",
                  "--max-new-tokens", "32"], f"http://127.0.0.1:{port}/", "app-server",
                 env={"GRADIO_ANALYTICS_ENABLED": "False"})
    yield f"http://127.0.0.1:{port}/"
    stop(proc)
