# Two commands for a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.td3_drive-installed
STEPS ?=
ARGS ?=
FUZZ_SECONDS ?= 10

.PHONY: train test bench fuzz mutation clean-venv

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[sim,eval,fast,dds,dev]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m td3_drive train --eval-episodes 20 $(if $(STEPS),--steps $(STEPS)) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q test $(ARGS)

bench: $(STAMP)
	$(PY) -m td3_drive.bench learner
	$(PY) -m td3_drive.bench policy
	$(PY) -m td3_drive.bench replay

# coverage-guided fuzzing (atheris) of every target in fuzz/, FUZZ_SECONDS each (about 5 min in all with the
# default 10); corpus, crashes and logs in fuzz-out/<target>/; e.g. make fuzz FUZZ_SECONDS=120 ARGS="weights bag"
fuzz: $(STAMP)
	$(PY) -m fuzz.run --seconds $(FUZZ_SECONDS) $(ARGS)

# mutation testing of learner, replay, reward, transitions and control (~40 min on 2 cores; not in CI);
# the summary (killed / survived / timeouts) is printed last and kept in mutants/mutmut-cicd-stats.json
mutation: $(STAMP)
	$(PY) -m pip install -q mutmut==3.8.1
	rm -rf mutants
	$(VENV)/bin/mutmut run $(ARGS)
	$(VENV)/bin/mutmut export-cicd-stats
	$(PY) -c "import json; print(json.dumps(json.load(open('mutants/mutmut-cicd-stats.json'))))"

clean-venv:
	rm -rf $(VENV)
