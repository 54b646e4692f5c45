# Two commands a newcomer needs:
#   make demo   create .venv, install, run the main job (a small experiment end to end + its report)
#   make test   create/refresh .venv, run the whole test suite (slow tests included)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-quick bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m ovis.training.demo

test: install
	$(PY) -m pytest -q

test-quick: install
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs reports .pytest_cache
