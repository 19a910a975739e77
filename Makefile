# The two commands of README: `make demo` (the main job) and `make test` (the suite).
# Both create .venv and install the pinned dependencies on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Two teachers on CamVid at 1/8 labels on CPU; pass ARGS="--data-root DIR" for another copy.
demo: setup
	$(BIN)/raysemi rwms --config experiments/camvid/rwms.yaml --run runs/demo $(ARGS)

test: setup
	$(BIN)/python -m pytest tests -q

clean:
	rm -rf $(VENV) runs
