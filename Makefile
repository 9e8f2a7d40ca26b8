# Developer entry points. `make train` and `make test` work on a fresh machine:
# they install torch first when it is missing (TORCH_SPEC: this machine's local
# CPU build by default; any torch>=2.6 works for users elsewhere).
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0

.PHONY: install train test bench

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e ".[test]"

train: install
	WANDB_MODE=$${WANDB_MODE:-offline} $(PYTHON) -m distlearn train $(ARGS)

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) benchmarks/bench_accumulators.py
	$(PYTHON) benchmarks/bench_learner.py
	$(PYTHON) benchmarks/bench_digits_vs_sklearn.py
