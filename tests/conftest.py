"""Shared fixtures: one real embedded model for the whole session (loading takes ~2 s)."""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from pathlib import Path

import pytest

from greedyscore.engines.transformers import TransformersEngine
from greedyscore.service import Service

# The suite runs the C kernel wherever it builds, whatever its gate would decide from this machine's
# clock (the gate's own tests script the clock: tests/test_native.py); subprocesses inherit it.
os.environ.setdefault("GREEDYSCORE_NATIVE", "1")


@pytest.fixture(scope="session")
def engine() -> TransformersEngine:
    return TransformersEngine.load(None, device="cpu")


@pytest.fixture(scope="session")
def service(engine: TransformersEngine) -> Service:
    return Service(engine)


@pytest.fixture(scope="session")
def app_store(tmp_path_factory) -> Path:
    """The SQLite share store of `app_server` (a test may put documents in it as another process would)."""
    return tmp_path_factory.mktemp("store") / "shares.db"


@pytest.fixture(scope="session")
def app_server(app_store):
    """`python app.py` in a subprocess, as a user starts it (its share store in a temp dir); -> its URL."""
    from servers import free_port, start, stop

    port = free_port()
    store = app_store
    proc = start([sys.executable, "app.py", "--port", str(port), "--concurrency", "16", "--max-queue", "64",
                  "--max-new-tokens", "32", "--store", str(store)], f"http://127.0.0.1:{port}/", "app-server",
                 env={"GRADIO_ANALYTICS_ENABLED": "False"})
    yield f"http://127.0.0.1:{port}/"
    stop(proc)


REQUIRE_SERVERS = os.environ.get("GREEDYSCORE_REQUIRE_SERVERS") == "1"  # `make test`: fail, never skip


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server (Debian's package) in a temporary data dir on loopback; -> its URL.
    The dir is directly under /tmp: the server's user must reach it (pytest's tmp dirs are root's)."""
    import tempfile

    from servers import start_postgres, stop

    data = Path(tempfile.mkdtemp(prefix="greedyscore-pg-"))
    try:
        proc, url = start_postgres(data)
    except (FileNotFoundError, ImportError) as ex:
        if REQUIRE_SERVERS:
            pytest.fail(str(ex))
        pytest.skip(f"no PostgreSQL here ({ex}); `make test` installs it and runs these")
    yield url
    stop(proc)
    shutil.rmtree(data, ignore_errors=True)


_databases = itertools.count()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_at(request, tmp_path):
    """Where a fresh share store lives: a new SQLite file, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "shares.db")
    import psycopg

    url = request.getfixturevalue("postgres_server")
    name = f"shares_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


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
