# Two entry points, both self-installing on a fresh machine (Python 3.11 + pip):
#   make demo   index a sample workspace, blend vs full prefill, generate, complete at a cursor, and evaluate
#               completion modes on holes cut from this repository (bundled model)
#   make test   run the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch is installed on its own first, so no dependency pulls a CUDA build.
TORCH ?= torch==2.13.0
PYTEST_ARGS ?= -m "not slow"
export TRITON_INTERPRET := 1

.PHONY: install test demo bench
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
	$(BIN)/kvblend index examples/sample_repo --json
	$(BIN)/kvblend bench blend --chunks 4 --chunk-tokens 256 --prompt-tokens 128 --json
	$(BIN)/kvblend generate --prompt-file examples/prompt.py --max-tokens 48
	@echo
	$(BIN)/kvblend complete --file examples/sample_repo/inventory/stock.py --line 12 --col 12 \
		--workspace examples/sample_repo --json
	@echo
	$(BIN)/kvblend eval --dataset . --modes full,naive,blend --limit 20 --out runs/eval-demo

bench: install
	$(BIN)/kvblend bench engine --json
