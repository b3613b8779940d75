# make test: set up .venv and run the whole test suite.  make demo: the pipeline end to end.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := demo

.PHONY: setup runtime test demo bench clean

# runtime: what the tools need (requirements.txt); setup adds the tests' and notebooks' packages
# and the other Keras backends (requirements-dev.txt, about a minute more to install).
runtime: $(VENV)/.runtime
setup: $(VENV)/.installed

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

test: setup
	$(PY) -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder --durations=15 tests

demo: runtime
	$(PY) demo.py --out $(DEMO)

bench: runtime
	$(PY) bench/preprocess.py

clean:
	rm -rf $(DEMO) .pytest_cache
