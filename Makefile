# Two commands for a newcomer: `make demo` (the offline quickstart) and `make test` (the whole suite).
# Both create .venv and install strata with the pinned versions of constraints.txt when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.strata-installed

.PHONY: demo test install benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/strata quickstart

test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=15

benchmark: $(STAMP)
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache
