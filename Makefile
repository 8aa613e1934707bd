# Everything runs from a project-local virtualenv; `make demo` and `make test` create it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STORE ?= demo-store

.PHONY: install demo test bench samples clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	rm -rf $(DEMO_STORE)
	$(BIN)/simfluence ingest sample_runs/fit --tag fit --store $(DEMO_STORE)
	$(BIN)/simfluence ingest sample_runs/heldout-random --tag heldout-random --store $(DEMO_STORE)
	$(BIN)/simfluence ingest sample_runs/heldout-leave30 --tag heldout-leave30 --store $(DEMO_STORE)
	$(BIN)/simfluence ingest sample_runs/heldout-classordered --tag heldout-classordered --store $(DEMO_STORE)
	$(BIN)/simfluence info --store $(DEMO_STORE)

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/run_all.py

samples: install
	$(BIN)/python sample_runs/generate.py

clean:
	rm -rf $(VENV) $(DEMO_STORE) .pytest_cache
