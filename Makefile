# make test: set up .venv and run the whole test suite.  make demo: the pipeline end to end.
# make container RUN=runs/paper: the BraTS challenge image of a run (Docker; docs/container.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := demo

.PHONY: setup runtime test demo bench container clean

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
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15 tests

demo: runtime
	$(PY) demo.py --out $(DEMO)

bench: runtime
	$(PY) bench/preprocess.py

# IMAGE: the image's name; TENSORFLOW=cpu: a CPU-only image (smaller; default gpu, CPU fallback).
IMAGE ?= een-brats
TENSORFLOW ?= gpu
CONTEXT := build/container

container: runtime
	@test -n "$(RUN)" || { echo "usage: make container RUN=runs/paper [IMAGE=een-brats] [TENSORFLOW=gpu|cpu]"; exit 2; }
	$(PY) container/entrypoint.py stage --run $(RUN) --out $(CONTEXT)
	docker build -t $(IMAGE) --build-arg TENSORFLOW=$(TENSORFLOW) -f $(CONTEXT)/container/Dockerfile $(CONTEXT)

clean:
	rm -rf $(DEMO) .pytest_cache build/container
