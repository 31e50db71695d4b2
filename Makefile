# Two commands for a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.td3_drive-installed
STEPS ?=
ARGS ?=

.PHONY: train test bench clean-venv

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[sim,eval,fast,dev]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m td3_drive.cli train --eval-episodes 20 $(if $(STEPS),--steps $(STEPS)) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q test $(ARGS)

bench: $(STAMP)
	$(PY) -m td3_drive.bench learner
	$(PY) -m td3_drive.bench policy
	$(PY) -m td3_drive.bench replay

clean-venv:
	rm -rf $(VENV)
