# Developer entry points. `make train` and `make test` work on a fresh machine:
# they install torch first when it is missing (TORCH_SPEC: this machine's local
# CPU build by default; any torch>=2.6 works for users elsewhere), then distlearn
# (`make train`: what training needs; `make test`: with the test extras, which
# bring transformers and datasets), once: again only when pyproject.toml changes
# (the stamp files .install*.stamp, ignored by git; `make install` forces it).
#
#   make train                                   # the digits MLP, configs/digits.yaml
#   make train ARGS="configs/wine.yaml run.seed=3"   # any `distlearn train` arguments
#   make test                                    # the whole suite
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
STAMP := .install.stamp
TEST_STAMP := .install-test.stamp

.PHONY: install train test bench

$(STAMP): pyproject.toml
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e .
	@touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PYTHON) -m pip install -q -e ".[test]"
	@touch $(TEST_STAMP)

install:
	@rm -f $(STAMP) $(TEST_STAMP)
	@$(MAKE) --no-print-directory $(TEST_STAMP)

train: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(PYTHON) -m distlearn train $(ARGS)

test: $(TEST_STAMP)
	$(PYTHON) -m pytest -q --durations=15

bench: $(TEST_STAMP)
	$(PYTHON) benchmarks/bench_accumulators.py
	$(PYTHON) benchmarks/bench_learner.py
	$(PYTHON) benchmarks/bench_digits_vs_sklearn.py
	$(PYTHON) benchmarks/bench_loader.py
