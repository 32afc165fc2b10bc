"""The GPU checks rehearsed on the CPU stand-in in every `make test`: tests/test_gpu.py runs once on
a lent GPU (`make gpu-check`), so a change that breaks it must show here, not on that one call."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_checks_pass_on_the_cpu_stand_in(tmp_path):
    env = {**os.environ, "GREEDYSCORE_GPU_REHEARSAL": "1", "OUT": str(tmp_path)}
    env.pop("GREEDYSCORE_GPU_MODEL", None)
    run = subprocess.run([sys.executable, "-m", "pytest", "tests/test_gpu.py", "-q", "-p", "no:cacheprovider"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = run.stdout[-3000:]
    assert run.returncode == 0, tail
    passed = re.search(r"(\d+) passed", tail)
    assert passed and int(passed.group(1)) >= 10 and "skipped" not in tail.splitlines()[-1], tail
    facts = (tmp_path / "gpu-facts.jsonl").read_text().splitlines()
    assert len(facts) >= 10  # every check recorded what it saw
