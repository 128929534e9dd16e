# make demo: the main job on the embedded default; make test: the whole test suite.
# Both create (or reuse) .venv/ with the pinned versions of requirements-dev.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

venv: $(STAMP)

# The editable install maps the packages that exist when it runs: a new sai_* package re-runs it.
$(STAMP): requirements-dev.txt pyproject.toml $(wildcard sai_*/__init__.py backends/*/__init__.py conformance/*/__init__.py)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sai_conformance

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
