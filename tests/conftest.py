"""Shared fixtures: one real embedded model for the whole session (loading takes ~2 s)."""

from __future__ import annotations

import pytest

from greedyscore.engines.transformers import TransformersEngine
from greedyscore.service import Service


@pytest.fixture(scope="session")
def engine() -> TransformersEngine:
    return TransformersEngine.load(None, device="cpu")


@pytest.fixture(scope="session")
def service(engine: TransformersEngine) -> Service:
    return Service(engine)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_server():
    """`python app.py` in a subprocess, as a user starts it; -> its URL."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    port = _free_port()
    log = open(root / ".pytest_cache" / "app-server.log", "w") if (root / ".pytest_cache").is_dir() else None
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port), "--concurrency", "16", "--max-queue", "64",
         "--max-new-tokens", "32"],
        cwd=root, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"},
        stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("app.py did not start in 180 s")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
