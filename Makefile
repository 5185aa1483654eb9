# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
# Each sets itself up first (scripts/setup.sh is idempotent and fast once done).
VENV ?= .venv
BIN := $(VENV)/bin
export VENV

.PHONY: setup demo test lint format

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
