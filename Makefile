# The README's two commands. Each creates .venv from nothing but Python.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BACKENDS ?= jax torch tensorflow
BENCH_BACKEND ?= tensorflow
PYTEST_ARGS ?=

.PHONY: demo test lint bench clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# Runtime install for the demo: keras + the TensorFlow backend (the fastest
# on a CPU in benchmarks/, see the README's "Speed").
$(VENV)/.demo-installed: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -e ".[tensorflow,convert,amg]"
	touch $@

# Everything the suite needs: all three backends and the reference extras,
# installed by uv with the package sources pip is configured with (the same
# packages as pip, bytecode compiled, in 65 s instead of 165 s; pip if uv
# fails): scripts/uv_install.py.
$(VENV)/.test-installed: pyproject.toml scripts/uv_install.py | $(BIN)/python
	$(BIN)/python scripts/uv_install.py -e ".[jax,tensorflow,torch,convert,amg,test,dev]"
	touch $@

demo: $(VENV)/.demo-installed
	KERAS_BACKEND=tensorflow $(BIN)/keras-sam demo -o demo_out

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests support benchmarks scripts
	$(BIN)/ruff format --check src tests support benchmarks scripts

# The whole suite once per Keras backend; every backend runs even if one
# fails, and the target fails if any did. Tests marked `integration`
# (subprocess commands, training scripts, the docs, the bundled model's
# held-out evaluation, full-size and extra training variants) prove nothing
# backend-specific and run on $(INTEGRATION_BACKEND) only: the other
# backends deselect them, and pytest says how many. PyTorch, because eager
# PyTorch traces nothing: the set alone took 648 s there against 1410 s on
# TensorFlow (2 cores). The exporters' tests (tests/export) are
# not in that set: they run on TensorFlow, which the exporters need. Two
# xdist workers, one test file each at a time, keep both cores busy through
# compilation and Python overhead; --durations lists the slowest tests.
# OMP_WAIT_POLICY=PASSIVE stops torch's OpenMP threads spinning while
# NumPy's BLAS uses the cores.
INTEGRATION_BACKEND ?= torch
PYTEST_WORKERS ?= 2
# The page's browser test (tests/serve/test_page.py) drives Debian's
# Chromium through Playwright (which cannot download browsers here): apt
# installs it when missing, as root; otherwise that test fails, not skips.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update && apt-get install -y chromium; \
	  else \
	    echo "chromium is missing (apt-get install chromium as root):" \
	      "tests/serve/test_page.py will fail" >&2; \
	  fi; }

# The CI machine sets PYTHONDONTWRITEBYTECODE, so Python would compile
# keras_sam's modules again in every process the tests start (commands,
# Ray workers, training scripts: about 1 s each); compileall writes their
# bytecode once (and only what changed on later runs).
test: $(VENV)/.test-installed lint browser
	@$(BIN)/python -m compileall -q src support tests
	@status=0; for b in $(BACKENDS); do \
	  echo "=== KERAS_BACKEND=$$b"; \
	  if [ $$b = $(INTEGRATION_BACKEND) ]; then sel="integration or not integration"; \
	  else sel="not integration"; fi; \
	  KERAS_BACKEND=$$b OMP_WAIT_POLICY=PASSIVE \
	    $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile \
	      --durations=25 -m "$$sel" $(PYTEST_ARGS) || status=1; \
	done; exit $$status

# Side-by-side benchmarks (not part of CI): every script appends its table
# and exact command to BENCHMARKS.md. Slow (about half an hour on 2 cores).
$(VENV)/.bench-installed: pyproject.toml | $(VENV)/.test-installed
	$(BIN)/pip install -e ".[bench]"
	touch $@

BENCH_ARGS ?= --threads 2 --num-warmup 2 --num-iters 5
bench: $(VENV)/.bench-installed
	for b in jax tensorflow torch; do \
	  extra=$$([ $$b = jax ] || echo --no-hf --no-onnx --no-torch-compile); \
	  OMP_WAIT_POLICY=PASSIVE $(BIN)/python benchmarks/decoder.py \
	    --backend $$b $(BENCH_ARGS) $$extra || exit 1; \
	  OMP_WAIT_POLICY=PASSIVE $(BIN)/python benchmarks/predictor.py \
	    --backend $$b $(BENCH_ARGS) || exit 1; \
	done
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python benchmarks/image_encoder.py \
	  --backend $(BENCH_BACKEND) --threads 2 --num-warmup 1 --num-iters 3
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python benchmarks/amg_memory.py \
	  --backend $(BENCH_BACKEND) --threads 2

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
