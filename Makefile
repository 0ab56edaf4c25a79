# Two commands for a newcomer: `make demo` and `make test`. Everything else is
# installed by the targets they depend on.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CACHE ?= $(CURDIR)/.cache
# GPU=1 (the default where nvidia-smi is found, or the venv already has onnxruntime-gpu): onnxruntime-gpu
# and its CUDA wheels (the [gpu] extra) instead of the CPU onnxruntime; it is reinstalled last so that it
# owns the `onnxruntime` module both distributions ship.
GPU ?= $(shell (command -v nvidia-smi || $(VENV)/bin/python -m pip show -q onnxruntime-gpu) >/dev/null 2>&1 \
	&& echo 1 || echo 0)
comma := ,
EXTRAS := train,dev,serve$(if $(filter 1,$(GPU)),$(comma)gpu)

.PHONY: all venv deps browser redis demo test test-fast lint bench bench-compare bench-scale bench-model bench-serve bench-gpu eval-matrix clean

all: test

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# One resolve for everything, pinned: apache-flink 2.3 -> beam -> protobuf<6 bounds onnx.
	$(PY) -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	if [ "$(GPU)" = 1 ]; then $(PY) -m pip install -q --force-reinstall --no-deps -c constraints.txt onnxruntime-gpu; fi
	touch $(STAMP)

venv: $(STAMP)

deps: venv
	STREAMREC_CACHE=$(CACHE) bash scripts/fetch_deps.sh
	STREAMREC_CACHE=$(CACHE) PYTHON=$(PY) bash scripts/build_java.sh

# The storefront page's test drives Debian's headless Chromium (tests/cluster/test_storefront_browser.py);
# installed here when missing (as root, or through sudo).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; \
	fi

# The serve view's Redis backend is tested against Debian's redis-server (tests/support/store_fixtures.py starts one
# per session on a free loopback port); installed here when missing (as root, or through sudo).
redis:
	@if ! command -v redis-server >/dev/null; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q redis-server; \
	fi

demo: deps
	$(VENV)/bin/streamrec demo

# Parallel test workers (pytest-xdist). The broker, job and cluster tests spend most of their time
# waiting on JVMs, checkpoints and topics: on 2 cores three workers keep both busy (one process left
# one core idle). Tests are dealt one at a time, heaviest first (tests/conftest.py).
# TEST_WORKERS=0 runs everything in this process, in file order.
TEST_WORKERS ?= 3
PYTEST := $(PY) -m pytest -ra --durations=25 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist load --maxschedchunk 1)

# The unit tier first (no broker, no JVM job: ~1 min); the broker, job and cluster tiers only when it passes.
test: deps browser redis
	$(PYTEST) tests/unit
	$(PYTEST) tests/integration tests/cluster

test-fast: venv
	$(PYTEST) tests/unit

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy streamrec udfs jobs model_export

# Job (p1, p2) vs plain-Python peer vs model and Kafka ceilings, and latency: ~20 min.
bench: deps
	$(VENV)/bin/streamrec bench --out bench-results

# This tree's bench beside REF's, alternated ABBA on the same flags: REF is built once in .cache/compare/
# with its own venv and jars (make deps there; ~7 GB, only the latest REF kept). Two runs per side: ~45 min. A change to the hot path
# reports this against the commit before it: make bench-compare REF=HEAD~1
REF ?= HEAD~1
COMPARE_FLAGS ?= --phases model,job,peer,latency --events 300000 --window-s 60 --warmup-s 20 \
	--latency-repeats 1 --latency-rates 250 --compare-repeats 2
bench-compare: deps
	$(VENV)/bin/streamrec bench --compare $(REF) $(COMPARE_FLAGS) --out bench-results/compare

# Store scale: 1,000,000 shoppers, 5,000,000 events, hashmap and rocksdb side by side, a TaskManager
# killed at 60%: over an hour per backend on 2 cores. Shrink with --scale-shoppers/--scale-events/--scale-items.
bench-scale: deps
	$(VENV)/bin/streamrec bench --phases scale --out bench-results

# Every log under ../shared/data x 3 seeds: train on the first half, score the second through the job.
eval-matrix: deps
	$(VENV)/bin/streamrec evaluate --matrix --out eval-matrix

# Lookup latency of `streamrec serve` at 1,000 requests/s over 100,000 stored lists: ~4 min.
bench-serve: deps
	$(VENV)/bin/streamrec bench-serve --out bench-results/serve

bench-model: deps
	$(VENV)/bin/streamrec bench-model --out bench-results/model

# One NVIDIA GPU, under 8 minutes: the model alone (fp32/fp16, IO binding, 1k-16k rows per call) and the
# job's batched ranking, into docs/bench/gpu. Without a GPU: scripts/bench_gpu.sh --provider cpu (a smoke run).
bench-gpu: deps
	PYTHON=$(PY) bash scripts/bench_gpu.sh

clean:
	rm -rf $(VENV) $(CACHE) artifacts out bench-results eval-matrix checkpoints
