"""Shared fixtures: one real embedded model for the whole session (loading takes ~2 s)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

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


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, driven by Playwright (its own browser download does not work offline)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make test` (it installs Debian's chromium)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()
