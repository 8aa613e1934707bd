# Everything runs from a project-local virtualenv; `make demo` and `make test` create it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SF := $(BIN)/simfluence
DEMO_STORE ?= demo-store
# demo outputs (data files, not store content) go here; git ignores it
DEMO_OUT ?= demo-out

.PHONY: install demo test bench samples samples-realistic clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	rm -rf $(DEMO_STORE) $(DEMO_OUT)
	mkdir -p $(DEMO_OUT)
	$(SF) ingest sample_runs/fit --tag fit --store $(DEMO_STORE)
	$(SF) ingest sample_runs/heldout-random --tag heldout-random --store $(DEMO_STORE)
	$(SF) ingest sample_runs/heldout-leave30 --tag heldout-leave30 --store $(DEMO_STORE)
	$(SF) ingest sample_runs/heldout-classordered --tag heldout-classordered --store $(DEMO_STORE)
	$(SF) info --store $(DEMO_STORE) --format table
	$(SF) fit --store $(DEMO_STORE) --runs fit --method linear --l2 auto --name linear
	$(SF) fit --store $(DEMO_STORE) --runs fit --name default
	$(SF) import-scores sample_runs/tracin_scores.csv.gz --store $(DEMO_STORE) --name tracin --scale fit --runs fit --format table
	$(SF) curriculum heldout-classordered-000 --store $(DEMO_STORE) \
	  | $(SF) simulate - --store $(DEMO_STORE) --model linear --init-loss run:heldout-classordered-000 \
	    --tests t000,t001,t002 -o $(DEMO_OUT)/simulated-classordered-000.csv
	@echo "simulated trajectory (last steps) -> $(DEMO_OUT)/simulated-classordered-000.csv"
	@tail -n 3 $(DEMO_OUT)/simulated-classordered-000.csv
	$(SF) eval --store $(DEMO_STORE) --model default --model linear --model tracin --runs heldout-random --format table
	$(SF) top --store $(DEMO_STORE) --model linear --tests all --k 5 --format table

# the whole suite on both cores; test files stay whole per worker (module fixtures built once)
test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile

bench: install
	$(BIN)/python bench/run_all.py

samples: install
	$(BIN)/python sample_runs/generate.py

# SGD+momentum and AdamW families (warm-up + cosine lr, short last batch per epoch) into
# sample_runs/momentum/ and sample_runs/adamw/ (git-ignored, ~9 MB each, deterministic, ~20 s each)
samples-realistic: install
	$(BIN)/python sample_runs/generate.py --family momentum
	$(BIN)/python sample_runs/generate.py --family adamw

clean:
	rm -rf $(VENV) $(DEMO_STORE) $(DEMO_OUT) .pytest_cache
