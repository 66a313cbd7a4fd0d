# Two commands do all set-up on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job: prepare + train + validate + predict on the shipped dataset, offline.
run: $(STAMP)
	$(BIN)/hotelbot prepare datasets/hotel_intents_es.json
	$(BIN)/hotelbot train --model-type classifier
	$(BIN)/hotelbot validate
	$(BIN)/hotelbot predict "quiero ver las noticias" "¿a qué hora es el desayuno?"

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
