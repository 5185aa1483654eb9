# The two commands of the README: `make demo` (the main job) and `make test` (the tests; `make test-slow` the slow ones).
# Each sets itself up first (scripts/setup.sh is idempotent and fast once done).
VENV ?= .venv
BIN := $(VENV)/bin
export VENV

.PHONY: setup demo test test-slow lint format

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	$(BIN)/python -m pytest -q

# the tests marked slow: real-model and minutes-long runs
test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
