# Two commands set everything up: `make train` (creates .venv if needed, then trains the default recipe)
# and `make test`. Extra Hydra overrides go in ARGS, e.g. `make train ARGS="model=small optim.optimizer.lr=1e-3"`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.diffexp-installed
ARGS ?=
SWEEP ?= size_lr

.PHONY: install train test test-slow lint bench sweep clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0  # the tested torch; pip takes its index's build (CPU here; README: the CPU build elsewhere)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/diffexp-train $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q --durations=15

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q -m slow --durations=0

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/run.py

sweep: $(STAMP)
	$(VENV)/bin/diffexp-train -m sweeps=$(SWEEP) $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
