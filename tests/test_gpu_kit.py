"""The GPU kit's model and `make gpu-check`'s script, on this machine (no CUDA, nothing downloaded).

The kit's model (the embedded model cut to gpu_kit.LAYERS layers, Q4_0 embedding) must convert like
any .gguf and still tell right scores from wrong ones, or the GPU checks it runs could pass with the
rows read one off; and it must fit in a device call with the wheels and the repo. The check script
must refuse at once, in one line, where it cannot run.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import gpu_check
import gpu_kit
import pytest
import torch
from cases import CONVERSATIONS, generate

from greedyscore.engines.transformers import TransformersEngine

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def kit_model(tmp_path_factory) -> Path:
    return gpu_kit.kit_model(tmp_path_factory.mktemp("kit"))


def test_the_kit_model_and_wheels_fit_in_a_device_call_with_the_repo(kit_model):
    model = kit_model.stat().st_size
    repo = gpu_kit.repo_bytes()
    assert model + gpu_kit.WHEELS_MAX_BYTES + repo <= gpu_kit.LIMIT_BYTES < gpu_kit.CALL_BYTES, (
        f"model {model / 2**20:.1f} + wheels {gpu_kit.WHEELS_MAX_BYTES / 2**20:.1f} + repo {repo / 2**20:.1f} MiB "
        f"are over {gpu_kit.LIMIT_BYTES / 2**20:.0f} MiB: take layers off (gpu_kit.LAYERS) or files out of the repo")


def test_the_kit_model_converts_and_tells_the_right_row_from_the_next(kit_model, tmp_path, monkeypatch, engine):
    monkeypatch.setenv("GREEDYSCORE_CACHE", str(tmp_path / "cache"))
    small = TransformersEngine.load(str(kit_model), device="cpu")  # resolve_model converts it, as on the GPU
    assert small.model.config.num_hidden_layers == gpu_kit.LAYERS
    chosen, off_by_one = [], []
    for case in ("english", "chinese", "multi-turn", "code"):
        prompt = small.tokenizer.prompt_ids(CONVERSATIONS[case])
        assert prompt == engine.tokenizer.prompt_ids(CONVERSATIONS[case])  # the tokenizer and template came along
        ids = list(generate(small, prompt, 24, 5).token_ids)
        with torch.inference_mode():
            logits = small.model(input_ids=torch.tensor([list(prompt) + ids])).logits[0].float()
        p = logits.softmax(-1)
        for i, token in enumerate(ids[:-1]):
            row = len(prompt) - 1 + i
            assert float(p[row, token]) >= float(p[row].max()) - 1e-4  # greedy (float32 decode against a forward)
            chosen.append(float(p[row, token]))
            off_by_one.append(abs(float(p[row + 1, token]) - chosen[-1]))
    # measured: median p 0.63, off-by-one median |dp| 0.47 (the full model's 30 layers give about the same)
    assert statistics.median(chosen) > 0.3
    assert statistics.median(off_by_one) > 0.2


def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_2():
    done = subprocess.run([sys.executable, "tests/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 2 and len(lines) == 1, lines
    assert "needs a CUDA GPU" in lines[0] and "make test" in lines[0] and "make gpu-check" in lines[0]


def test_gpu_check_without_torch_says_so_in_one_line_and_exits_2(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('libcudart.so.13: cannot open')\n")
    done = subprocess.run([sys.executable, "tests/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 2 and len(lines) == 1, lines
    assert "torch does not import (ImportError: libcudart.so.13" in lines[0]


def test_gpu_check_without_the_kit_says_how_to_make_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "KIT", tmp_path / ".gpu-kit")
    with pytest.raises(SystemExit) as ex:
        gpu_check.kit_files()
    assert ex.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "make gpu-kit" in lines[0] and "carry .gpu-kit" in lines[0]


def test_a_step_past_its_budget_ends_with_its_children_and_later_steps_still_run(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 0.5)
    monkeypatch.setattr(gpu_check, "DRAIN_S", 0.5)
    steps = gpu_check.Steps(tmp_path / "log", env={"PATH": "/usr/bin:/bin"})
    # a child that outlives its parent and holds the output pipe: the step must still end
    rc, _ = steps.run("stuck", ["sh", "-c", "sleep 60 & echo started; sleep 60"], 1)
    assert rc is None
    rc, out = steps.run("failing", ["sh", "-c", "echo said; exit 3"], 5)
    assert (rc, out) == (3, "said\n")
    rc, _ = steps.run("leaves a child", ["sh", "-c", "sleep 60 & echo done"], 5)
    assert rc == 0
    assert [(name, status) for name, status, _ in steps.results] == [
        ("stuck", "TIMED OUT after 1 s"), ("failing", "FAILED (exit 3)"), ("leaves a child", "ok")]
    assert all(seconds < 5 for _, _, seconds in steps.results)
    assert steps.failed() == ["stuck", "failing"]
    log = (tmp_path / "log").read_text()
    assert "started" in log and "said" in log and "=== gpu-check failing: FAILED (exit 3)" in log
