# Set-up and everyday commands. Each target creates .venv first if it is missing.
#
# TORCH_REQ picks the torch build. The default takes the CPU wheel (no CUDA
# downloads on a CPU-only machine); a GPU user can run, for example,
#   make demo TORCH_REQ='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'

PYTHON ?= python3
VENV ?= .venv
TORCH_REQ ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_REQ)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/transmute run resynthesize examples/speech -o demo-out/resynthesize
	@echo "Listen: demo-out/resynthesize/*.wav (originals in examples/speech/)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf demo-out bench-out .pytest_cache build *.egg-info
