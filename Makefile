# Two commands (see README): `make run` (set up + a small search on CPU) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
RUN_DIR ?= runs/quickstart

.PHONY: setup run test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first, so the project does not pull a multi-GB CUDA build
	$(BIN)/pip install -q "$(TORCH)" || $(BIN)/pip install -q torch --index-url https://download.pytorch.org/whl/cpu

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[test,postgres,plots]"
	touch $@

setup: $(VENV)/.installed

run: setup
	mkdir -p $(RUN_DIR)
	name=quickstart-$$(date +%Y%m%d-%H%M%S) && \
	$(BIN)/nas search run searchspaces/quickstart.cell --controller random --trials 16 --seed 0 \
		--db $(RUN_DIR)/nas.db --name $$name && \
	$(BIN)/nas results top --db $(RUN_DIR)/nas.db --search $$name --k 5

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) runs .pytest_cache
