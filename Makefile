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
# Festival and two of its voices make the offline two-speaker corpus (kal, slt).
SYSTEM_PACKAGES := festival festvox-kallpc16k festvox-us-slt-hts

.PHONY: venv system-packages demo test bench corpus clean

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

# Installs the festival voices with apt-get where it can (root or password-less
# sudo); elsewhere the tests that need them are skipped, with the reason.
system-packages:
	@if [ -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts ] && [ -d /usr/share/festival/voices/english/kal_diphone ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	else echo "note: no festival voices and no apt-get rights: festival tests will be skipped ($(SYSTEM_PACKAGES))"; fi

test: $(STAMP) system-packages
	$(BIN)/python -m pytest -q

# The two-speaker corpus the built-in converter is trained on (data/festival/).
corpus: system-packages
	$(PYTHON) scripts/festival_corpus.py data/festival

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf demo-out bench-out .pytest_cache build *.egg-info
