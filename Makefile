# Two commands do all the set-up: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is pinned first so the CPU build from the local file is used, never the CUDA wheels.
$(STAMP): $(BIN)/python pyproject.toml
	@echo "[install 1/3] pip into $(VENV)"
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "[install 2/3] torch 2.13.0, CPU build (the largest download: a minute or more)"
	$(BIN)/python -m pip install -q torch==2.13.0
	@echo "[install 3/3] medrobust and its dependencies (MONAI, SciPy, scikit-image, ...)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	@echo "[install] done: activate with 'source $(VENV)/bin/activate'"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/medrobust demo

# The suite, then its exactness tier again with AVX2 kernels forced: comparisons that hold only
# with AVX-512 kernels fail here on any x86-64 machine (tests/conftest.py says which may be exact).
test: $(STAMP)
	$(BIN)/python -m pytest -q
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -q -m exactness

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
