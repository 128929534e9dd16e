# make demo: train a model with SGD-SaI and AdamW side by side (DEMO_ARGS="--steps 100" passes flags);
# make test: the whole test suite.
# Both create (or reuse) .venv/ with the pinned versions of requirements-dev.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean

venv: $(STAMP)

# The editable install maps the packages that exist when it runs: a new sai_* package re-runs it.
$(STAMP): requirements-dev.txt pyproject.toml $(wildcard sai_*/__init__.py backends/*/__init__.py conformance/*/__init__.py)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sai_demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest

# ruff (lint and format check) over the tree, mypy over sai_core and backends/ (pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis .mypy_cache .ruff_cache demo-output

# make bench: every benchmark of benchmarks/, 3 interleaved runs, medians; writes docs/benchmarks.md
# and its charts (docs/benchmarks_*.png). About 10 minutes on 2 cores. The GPU check is separate:
# benchmarks/gpu_check.sh on a machine with a CUDA GPU.
.PHONY: bench
bench: $(STAMP)
	$(PY) benchmarks/report.py --runs 3

# make paper-check: the paper's claims measured at CPU scale (sai_paper/): 3 tasks x 4 optimizers x 7 learning
# rates x 3 seeds, torch only, 2 worker processes of 1 thread; writes docs/paper-check.md and its charts
# (docs/paper_*.png). Measured: 13.6 minutes wall time (2 cores, load average 1.9; 23 minutes with other jobs
# at load 2.8 to 6.2; the page records its own); budget 35 minutes. `make paper-check PAPER_ARGS=--quick`: a short version (about 1 minute).
.PHONY: paper-check
paper-check: $(STAMP)
	$(PY) -m sai_paper $(PAPER_ARGS)
