# s2lc: Sentinel-2 land-cover mapping with SenCLIP / TimeSenCLIP.
# Every target bootstraps .venv from the pinned requirements when they change.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Python >= 3.12 (rasterio 1.5 / GDAL 3.12): python3.12 or newer on the PATH, else under pyenv.
PYTHON ?= $(shell for p in python3.12 python3.13 python3 $$(ls -d $$HOME/.pyenv/versions/3.1[2-9]*/bin/python3 2>/dev/null); do \
	if $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then echo $$p; break; fi; done)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Set to a PyTorch wheel index (e.g. https://download.pytorch.org/whl/cu128) for CUDA torch.
TORCH_INDEX_URL ?=

REGION ?= demo
YEAR ?=
MODEL ?= timesenclip
OUT ?=
ARGS ?=

export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: help env test test-integration test-real test-browser map demo-zeroshot bench bench-scale rehearsal lint clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'
	@echo "  variables: REGION=$(REGION) YEAR=$(YEAR) MODEL=$(MODEL) OUT=$(OUT) ARGS=$(ARGS)"

$(STAMP): requirements.txt requirements-test.txt
	@test -n "$(PYTHON)" || { echo "make: Python >= 3.12 not found; install it or pass PYTHON=/path/to/python3.12" >&2; exit 2; }
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	@if [ -n "$(TORCH_INDEX_URL)" ]; then $(PY) -m pip install -q torch==2.13.0 torchvision==0.28.0 --index-url $(TORCH_INDEX_URL); fi
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-test.txt
	@touch $(STAMP)

env: $(STAMP) ## Create/refresh .venv from the pinned requirements (no-op when unchanged)

# The suite's processes: one per core (pytest-xdist, whole files per worker). TEST_WORKERS=0: one.
TEST_WORKERS ?= 2

test: $(STAMP) ## Run the test suite (offline, no GPU needed)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

test-integration: $(STAMP) ## Run the slow integration tests (real Slurm, pgstac, faults, the full make map demo)
	$(PY) -m pytest -m integration -o addopts="" --timeout=1800

test-real: $(STAMP) ## Validate on real Sentinel-2 samples in $$S2LC_REAL_DATA (skips without them)
	@if [ -d "$$S2LC_REAL_DATA" ]; then $(PY) -m pytest tests/real -m real -o addopts="" -p no:cacheprovider --timeout=1800 -q; else echo "test-real: skipped (S2LC_REAL_DATA is not set to a folder of real samples)"; fi

# Plain `make map` (the demo region, TimeSenCLIP, no YEAR/ARGS) runs the demo's whole few-shot
# workflow (`python -m pipeline demo map`); anything else is one `python -m pipeline run`.
DEMO_WORKFLOW := $(and $(filter demo,$(REGION)),$(filter timesenclip,$(MODEL)),$(if $(YEAR)$(ARGS),,yes))

test-browser: $(STAMP) ## Browser test of the map viewer (installs Debian's chromium + Playwright)
	@command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }
	$(PY) -m pip install -q --disable-pip-version-check -r tests/requirements-browser.txt
	S2LC_REQUIRE_BROWSER=1 $(PY) -m pytest -m browser -o addopts="" -p no:cacheprovider -q --timeout=3600 tests/pipeline/view/test_view_browser.py

map: $(STAMP) ## Make a land-cover map: make map REGION=demo YEAR=2023 MODEL=timesenclip OUT=dir
ifneq ($(DEMO_WORKFLOW),)
	$(PY) -m pipeline demo map $(if $(OUT),--out $(OUT))
else
	$(PY) -m pipeline run --region $(REGION) --model $(MODEL) $(if $(YEAR),--year $(YEAR)) $(if $(OUT),--out $(OUT)) $(if $(filter demo,$(REGION)),--untrained --tile-size 100) $(ARGS)
endif

demo-zeroshot: $(STAMP) ## The demo mapped zero-shot from prompts with untrained weights (mechanics only)
	$(PY) -m pipeline run --region demo --model $(MODEL) --untrained --tile-size 100 --out $(or $(OUT),outputs/demo-zeroshot) $(ARGS)

bench: $(STAMP) ## Benchmarks against same-run baselines -> bench/results.json
	$(PY) -m pipeline bench $(ARGS)

bench-scale: $(STAMP) ## Search/plan/scheduling at EU-27 scale on pgstac, no pixels (integration, minutes)
	$(PY) -m tests.integration.bench_scale $(ARGS)

# The continental rehearsal: (b) the pixel-real run (400 km2 across UTM 32|33 and two EEA cells,
# 30 acquisitions, faulty object store, two workers killed), then (a) the whole of EU-27, metadata
# only: run from the search on pgstac to every tile scheduled, a stand-in tile task. See the
# README for their times. REHEARSAL_EU27=0 skips (a).
REHEARSAL_EU27 ?= 1
rehearsal: $(STAMP) ## Rehearse a continental run: 400 km2 under faults, then EU-27 metadata only -> bench/results.json
	nice $(PY) -m pipeline.bench.rehearsal $(ARGS)
	$(if $(filter 1,$(REHEARSAL_EU27)),nice $(PY) -m tests.integration.bench_scale run-eu27)

lint: $(STAMP) ## ruff lint + format check + the import layers (import-linter, pyproject.toml)
	$(PY) -m ruff check pipeline model aoi tests
	$(PY) -m ruff format --check pipeline model aoi tests
	$(VENV)/bin/lint-imports

clean: ## Remove outputs and caches (keeps .venv)
	rm -rf outputs .pytest_cache .ruff_cache bench/results.json
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
