"""`make gpu-check`: the whole GPU check in one command, on a lent GPU machine in a device call that
carries .gpu-kit (`make gpu-kit` builds it here). That machine's python3 holds CUDA torch 2.11 and
transformers 5.17 but no lmdeploy, no gguf, no registry and no hub; this script runs with it:

1. refuses at once, in one line with exit 2, without CUDA or without the kit;
2. installs the kit's wheels into a temporary dir (offline, no dependencies) put on PYTHONPATH;
3. converts the kit's model once (greedyscore.models.resolve_model, cache in a temporary dir) and
   names it in GREEDYSCORE_GPU_MODEL for the tests and the benchmark;
4. runs tests/test_gpu.py (junit and log in $OUT), then benchmarks/bench_gpu.py (RESULTS-gpu.md);
5. writes $OUT/gpu-summary.txt (GPU, versions, TurboMind, counts, each step's time) and prints it last.

Each step has its own time budget (all of them under 8 minutes); a failed step does not stop the
later ones; the exit code is 1 if any failed. $OUT is the device call's output folder (./gpu-out
without it).

    python3 tests/gpu_check.py        # = make gpu-check (GPU_PYTHON=python3)
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / ".gpu-kit"
# seconds per step; the total stays under 8 minutes with the summary's own few seconds
BUDGET = {"install": 60, "info": 45, "convert": 90, "test_gpu": 220, "bench_gpu": 60}
TEST_TIMEOUT_S = 150  # pytest-timeout, per test (an engine's start counts in its first test)
BENCH_MAX_S = 220  # bench_gpu gets what the steps before it left, up to this
TOTAL_S = 480
MIN_STEP_S = 10.0  # a step still starts when the total is nearly spent
DRAIN_S = 5.0  # for the last output after a step ends (or is ended)
LOG_MAX_BYTES = 15 * 2**20


def refuse(message: str) -> None:
    print(f"gpu-check: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def need_cuda() -> None:
    """Exit 2 with one line unless this Python's torch sees a CUDA GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            return
        why = f"torch {torch.__version__} sees no CUDA GPU"
    except Exception as ex:  # noqa: BLE001 - ImportError, or a CUDA library torch links against
        why = f"torch does not import ({type(ex).__name__}: {str(ex).splitlines()[0] if str(ex) else ''})"
    refuse(f"needs a CUDA GPU and a CUDA build of PyTorch in {sys.executable}, and here {why}: on this machine run "
           "`make test` (the GPU tests skip), and run `make gpu-check` in a device call that carries .gpu-kit")


def kit_files() -> tuple[list[Path], Path]:
    wheels, models = sorted(KIT.glob("*.whl")), sorted(KIT.glob("*.gguf"))
    if not wheels or not models:
        refuse(f"no kit in {KIT} (wheels and a .gguf): run `make gpu-kit` on the development machine and carry "
               ".gpu-kit in the device call")
    return wheels, models[0]


class Steps:
    """Runs each step as a subprocess with a time budget, its output to the console and the log."""

    def __init__(self, log: Path, env: dict[str, str]):
        self.log = log.open("a", encoding="utf-8")
        self.env = env
        self.results: list[tuple[str, str, float]] = []  # (name, "ok" / what failed, seconds)
        self.start = time.monotonic()

    def write(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()
        if self.log.tell() < LOG_MAX_BYTES:  # a file over 16 MiB would not come back from the device
            self.log.write(text if self.log.tell() + len(text) < LOG_MAX_BYTES else "[gpu-check: log cut here]\n")
            self.log.flush()

    def left(self) -> float:
        return TOTAL_S - (time.monotonic() - self.start)

    def run(self, name: str, cmd: list[str], budget: float) -> tuple[int | None, str]:
        """-> (exit code, None if it ran out of time; its output)."""
        budget = max(MIN_STEP_S, min(budget, self.left()))
        self.write(f"\n=== gpu-check {name} (budget {budget:.0f} s): {' '.join(cmd)}\n")
        began = time.monotonic()
        out: list[str] = []
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)

        def pump() -> None:
            for line in proc.stdout:
                out.append(line)
                self.write(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc: int | None = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            rc = None
        if rc is not None:
            reader.join(timeout=DRAIN_S)
        if rc is None or reader.is_alive():  # out of time, or its children still hold the pipe: end its group
            self._end_group(proc, reader)
        seconds = time.monotonic() - began
        status = "ok" if rc == 0 else f"TIMED OUT after {budget:.0f} s" if rc is None else f"FAILED (exit {rc})"
        self.results.append((name, status, seconds))
        self.write(f"=== gpu-check {name}: {status} in {seconds:.1f} s\n")
        return rc, "".join(out)

    @staticmethod
    def _end_group(proc: subprocess.Popen, reader: threading.Thread) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            reader.join(timeout=DRAIN_S)
            if not reader.is_alive() and proc.poll() is not None:
                break
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def mark(self, name: str, status: str) -> None:
        self.results.append((name, status, 0.0))

    def failed(self) -> list[str]:
        return [name for name, status, _ in self.results if not status.startswith("ok")]


INFO = r"""
import importlib, sys
print("INFO python:", sys.version.split()[0])
import torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print("INFO torch:", torch.__version__, "CUDA", torch.version.cuda, "|", gpu)
from importlib.metadata import version
for name in ("transformers", "triton", "gguf", "lmdeploy"):
    try:
        importlib.import_module(name)
        print(f"INFO {name}:", version(name))
    except Exception as ex:
        print(f"INFO {name}: does not import ({type(ex).__name__}: {ex})")
try:
    import lmdeploy.turbomind as tm
    ok = tm.is_available()
    why = "" if ok else f" ({type(tm._import_error).__name__}: {tm._import_error}; the kit drops its CUDA 12 binary)"
    print("INFO turbomind:", "available" if ok else "not available" + why)
except Exception as ex:
    print(f"INFO turbomind: lmdeploy.turbomind does not import ({type(ex).__name__}: {ex})")
try:
    import lmdeploy.pytorch.engine.engine  # noqa: F401
    print("INFO pytorch engine: imports")
except Exception as ex:
    print(f"INFO pytorch engine: does not import ({type(ex).__name__}: {ex})")
"""

CONVERT = r"""
import sys, time
from greedyscore.models import resolve_model
t = time.monotonic()
name, where = resolve_model(sys.argv[1])
print(f"INFO model: {name} converted in {time.monotonic() - t:.1f} s into {where}")
"""


def nvidia_smi() -> str:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
        return (done.stdout.strip() or done.stderr.strip()).replace("\n", "; ")
    except (OSError, subprocess.TimeoutExpired) as ex:
        return f"nvidia-smi did not answer ({type(ex).__name__})"


def junit_counts(path: Path) -> dict[str, int] | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    return n


def main() -> int:
    need_cuda()
    wheels, model = kit_files()
    out = Path(os.environ.get("OUT") or ROOT / "gpu-out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    site = Path(tempfile.mkdtemp(prefix="greedyscore-gpu-site-"))
    cache = Path(tempfile.mkdtemp(prefix="greedyscore-gpu-cache-"))
    path = [str(site), str(ROOT), os.environ.get("PYTHONPATH")]
    env = dict(os.environ, OUT=str(out), PYTHONPATH=os.pathsep.join(filter(None, path)),
               GREEDYSCORE_CACHE=str(cache),
               GREEDYSCORE_GPU_MODEL=str(model), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PATH=f"{site / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    log = out / "gpu-check.log"
    log.unlink(missing_ok=True)
    steps = Steps(log, env)
    py = sys.executable
    info = converted = ""
    counts = None
    timeout = [f"--timeout={TEST_TIMEOUT_S}"] if importlib.util.find_spec("pytest_timeout") else []
    try:
        steps.run("install", [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                              "--disable-pip-version-check", "--target", str(site), *map(str, wheels)],
                  BUDGET["install"])
        _, info = steps.run("info", [py, "-c", INFO], BUDGET["info"])
        _, converted = steps.run("convert", [py, "-c", CONVERT, str(model)], BUDGET["convert"])
        junit = out / "gpu-junit.xml"
        junit.unlink(missing_ok=True)
        steps.run("test_gpu", [py, "-m", "pytest", "tests/test_gpu.py", "-v", "-s", "-rs", "-p", "no:cacheprovider",
                               *timeout, f"--junitxml={junit}"], BUDGET["test_gpu"])
        counts = junit_counts(junit)
        if counts is not None and counts["passed"] == 0:
            steps.mark("test_gpu passed none", "FAILED (no test passed)")
        bench = ROOT / "benchmarks" / "bench_gpu.py"
        if bench.is_file():
            budget = max(BUDGET["bench_gpu"], min(BENCH_MAX_S, steps.left() - 10))
            steps.run("bench_gpu", [py, str(bench.relative_to(ROOT)), "--results", str(out / "RESULTS-gpu.md"),
                                    "--budget-s", str(max(10, int(budget - 30))),
                                    "--models", "8b,gguf", "--reps", "2"], budget)  # the real-size model first
        else:
            steps.mark("bench_gpu", "ok (not run: no benchmarks/bench_gpu.py)")
    finally:
        shutil.rmtree(site, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    kit = f"{len(wheels)} wheels, {model.name} ({model.stat().st_size / 2**20:.1f} MiB)"
    lines = ["gpu-check summary", f"gpu: {nvidia_smi()}", f"kit: {kit}"]
    lines += [line.removeprefix("INFO ") for line in (info + converted).splitlines() if line.startswith("INFO ")]
    tally = "{tests} tests: {passed} passed, {failures} failed, {errors} errors, {skipped} skipped"
    tally = "no junit (pytest did not finish)" if counts is None else tally.format(**counts)
    lines.append(f"tests/test_gpu.py: {tally}")
    lines.append("steps: " + "; ".join(f"{name} {status} {seconds:.1f} s" for name, status, seconds in steps.results))
    failed = steps.failed()
    verdict = f"FAILED ({', '.join(failed)})" if failed else "passed"
    lines.append(f"total {time.monotonic() - steps.start:.0f} s: {verdict}")
    names = sorted({p.name for p in out.iterdir() if p.is_file()} | {"gpu-summary.txt"})
    lines.append(f"files in {out}: {', '.join(names)}")
    summary = "\n".join(lines) + "\n"
    (out / "gpu-summary.txt").write_text(summary, encoding="utf-8")
    steps.write("\n" + summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
