# Two commands a newcomer needs:
#   make demo   create .venv, install, run the main job (a small experiment end to end + its report)
#   make test   create/refresh .venv, lint (ruff), run the whole test suite (slow tests included)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install data demo reproduce lint test test-quick bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

DATA_ROOT ?= ../shared/data
DEMO_REPORT := --keys estimator,iw --metrics test:loss/L_k,test:gmm/posterior_mse,test:gmm/prior_mse,train:grads/snr \
	--pivot_metrics max:test:loss/L_k,last:test:gmm/posterior_mse,last:test:gmm/prior_mse,last:train:grads/snr

# The paper's data sets (MNIST, Fashion-MNIST, Larochelle's binarized MNIST, IWAE Omniglot), downloaded,
# verified and placed where run.py / manager.py read them: ./data (their default data root), or
# DATA_ROOT when given (make data DATA_ROOT=/shared/datasets). MIRROR=URL tries that mirror first.
FETCH_ROOT := $(if $(filter file,$(origin DATA_ROOT)),data,$(DATA_ROOT))
data: install
	$(PY) -m ovis.datasets fetch all --data_root $(FETCH_ROOT) $(if $(MIRROR),--mirror $(MIRROR))

# The main job: experiments/demo.json (the Gaussian mixture model of Figure 2, five estimators,
# two values of K) drained by 2 worker processes, then its report (reports/demo/index.html).
demo: install
	$(PY) manager.py --exp demo --processes 2 --rf --root runs/ --data_root $(DATA_ROOT)
	$(PY) report.py --exp demo --root runs/ --output reports/ $(DEMO_REPORT)
	@echo "report: reports/demo/index.html"

# docs/reproduction.md: the paper's Figures 1-4 and its efficiency claim beside the paper's numbers
# (about 90 minutes on 2 CPU cores; resumable: a rerun continues where the last stopped).
reproduce: install
	$(PY) reproduce.py --root runs/reproduce --data_root $(DATA_ROOT) --output docs

# The rule set is [tool.ruff] in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

test-quick: lint
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs reports .pytest_cache
