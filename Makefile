# Two commands for a fresh machine with Python 3.11:  make demo  and  make test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.modelpack-installed
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "modelpack needs Python >= 3.11; set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	@touch $@

install: $(STAMP)

# The main job on the bundled example: Keras 3 CNN -> verified package in build/demo.
demo: $(STAMP)
	$(BIN)/modelpack optimize examples/digits/model.keras -o build/demo --force \
	    --name digits --eval-data examples/digits/eval.npz \
	    export --format onnx --format savedmodel --format tflite
	$(BIN)/modelpack verify build/demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf build .pytest_cache
