# `make demo` and `make test` each set up .venv themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow format install clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "lopt needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -c constraints.txt -e '.[test]'
	@touch $@

install: $(STAMP)

# Meta-trains on the bundled digits (resuming if DEMO_DIR has checkpoints),
# compares the result with an Adam learning-rate sweep, then scores it on a
# short held-out suite of models it never saw (Adam tuned per task); ends
# with the generalist shipped in the package on models outside every family
# (a transformer on text among them) beside Adam at 1e-3 and the
# tuning-free optimizers.
DEMO_DIR ?= workdirs/demo
demo: $(STAMP)
	$(PY) -m lopt.main --config=configs/default.py --workdir=$(DEMO_DIR)
	$(PY) -m lopt.evaluate --workdir=$(DEMO_DIR)
	$(PY) -m lopt.evaluate --workdir=$(DEMO_DIR) --suite=quick
	$(PY) -m lopt.evaluate --workdir=generalist --suite=wide_quick --output=$(DEMO_DIR)/generalist

# Style first (seconds), then the suite; `make test-slow` adds the long
# statistical and end-to-end checks (CI runs both).
LINTED := lopt tests configs notebooks
test: $(STAMP)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/ruff check $(LINTED)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

format: $(STAMP)
	$(VENV)/bin/ruff format $(LINTED)
	$(VENV)/bin/ruff check --fix $(LINTED)

clean:
	rm -rf $(VENV) build *.egg-info
