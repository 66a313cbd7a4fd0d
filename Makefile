# Two commands do all set-up on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test check docs install clean constraints bytecode

# Every role (train + serve + dev) at the exact versions of constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(MAKE) bytecode
	touch $(STAMP)

# hotelbot's own bytecode, as a (non-editable) pip install compiles it: without it every command compiles
# the package in memory where Python may not write it (PYTHONDONTWRITEBYTECODE, read-only checkouts), ~0.1 s
# of each start. Stale files are never used (Python checks each against its source); `make run` refreshes it.
bytecode:
	$(BIN)/python -m compileall -q hotelbot_cli

install: $(STAMP)

# After changing pyproject.toml's dependencies: install them (without the old pins), write the exact versions back.
constraints:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	{ head -2 constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -vi '^hotelbot' \
	  | sed -E 's/^torch==([0-9.]+)\+cpu$$/torch==\1/'; } > constraints.txt.new && mv constraints.txt.new constraints.txt

# The main job: prepare + train + validate + predict on the shipped dataset, offline.
run: $(STAMP) bytecode
	$(BIN)/hotelbot prepare datasets/hotel_intents_es.json
	$(BIN)/hotelbot train --model-type classifier
	$(BIN)/hotelbot validate
	$(BIN)/hotelbot predict "quiero ver las noticias" "¿a qué hora es el desayuno?"

# The contributor checks (CONTRIBUTING.md): lint, format and types of the library package, as configured in
# pyproject.toml. `make test` runs them first, so CI fails on them too. (The docs site's strict build is a test.)
check: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy

# The documentation site (docs/, mkdocs.yml) on http://127.0.0.1:8000, rebuilt on every change.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

test: $(STAMP) check
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build site *.egg-info
