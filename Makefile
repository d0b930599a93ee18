# Two entry points, both self-installing on a fresh machine (Python 3.11 + pip):
#   make demo   run the main job on the bundled default model
#   make test   run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch is installed on its own first, so no dependency pulls a CUDA build.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?= -m "not slow"
export TRITON_INTERPRET := 1

.PHONY: install test demo bench lint
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: install
	$(BIN)/kvblend generate --prompt-file examples/prompt.py --max-tokens 48

bench: install
	$(BIN)/kvblend bench engine --json
