# make test: set up .venv and run the whole test suite.  make demo: the pipeline end to end.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := demo

.PHONY: setup test demo bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) demo.py --out $(DEMO)

bench: setup
	$(PY) bench/preprocess.py

clean:
	rm -rf $(DEMO) .pytest_cache
