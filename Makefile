# Two commands for a fresh machine with Python 3.11:  make demo  and  make test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.modelpack-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint docs bench bench-objective bench-scale bench-serve bench-corpus clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "modelpack needs Python >= 3.11; set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	@touch $@

install: $(STAMP)

# The main job on the bundled example: Keras 3 CNN -> prune 80% (fine-tuned) -> ONNX ->
# static int8 -> lzma archive, gated on accuracy; then benchmarked against the original, reported, verified, packed.
demo: $(STAMP)
	$(BIN)/modelpack optimize examples/digits/model.keras -o build/demo --force \
	    --name digits --eval-data examples/digits/eval.npz --max-accuracy-drop 1.0 \
	    prune --sparsity 0.8 --train-data examples/digits/train.npz \
	    export --format onnx \
	    quantize --method static --per-channel \
	    compress --archive lzma
	$(BIN)/modelpack benchmark build/demo --eval-data examples/digits/eval.npz --batch-sizes 1,32 --duration 0.5 \
	    --fail-if "onnx.p99_ms@1 > 20" --fail-if "accuracy_drop > 1"
	$(BIN)/modelpack report build/demo -o build/demo-report.html --force
	$(BIN)/modelpack verify build/demo
	$(BIN)/modelpack pack build/demo -o build/demo.mpk --force

bench: $(STAMP)
	$(BIN)/python benchmarks/optimize_bench.py

bench-objective: $(STAMP)  # the objective's targets against same-run float baselines; rewrites docs/corpus.md's tables
	$(BIN)/python benchmarks/objective_bench.py --docs

bench-scale: $(STAMP)  # wall time and peak memory of optimize against the plain framework steps
	$(BIN)/python benchmarks/scale_bench.py

bench-corpus: $(STAMP)  # every command on every corpus model: rewrites the corpus table of docs/corpus.md, dated
	$(BIN)/python benchmarks/corpus_table.py --docs

bench-serve: $(STAMP)  # needs wrk (apt-get install wrk)
	$(BIN)/python benchmarks/serve_bench.py

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)  # under a minute: no TensorFlow conversions, README/CI examples or installs
	$(BIN)/python -m pytest -m "not slow and not corpus" $(PYTEST_ARGS)

lint: $(STAMP)  # ruff, and mypy --strict on src/ (settings in pyproject.toml); CI runs both before the tests
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

docs: $(STAMP)  # the documentation site from docs/ into build/site, offline; any warning (a broken link) fails it
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d build/site

clean:
	rm -rf build .pytest_cache
