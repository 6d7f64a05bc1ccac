# cdsfusion: `make run` serves the engine, `make test` runs every gate and test.
# Both build .venv on a fresh machine that has Python 3.11+ and make.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cdsfusion-installed
TORCH_VERSION ?= 2.13.0
# The CPU build of torch where there is no CUDA (never a multi-GB CUDA download in CI);
# set TORCH_INDEX_URL to choose another build.
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
ifeq ($(HAS_CUDA),yes)
TORCH_INDEX_URL ?=
else
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
endif
TORCH_PIP_ARGS := $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL),)
PYTEST_ARGS ?=

.PHONY: install run demo test lint typecheck unit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

$(STAMP): pyproject.toml | $(BIN)/python
	@# torch alone from the chosen index (its dependencies come from the default index below,
	@# so an unreachable extra index costs one lookup, not one per dependency).
	$(BIN)/python -m pip install --quiet --no-deps $(TORCH_PIP_ARGS) "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev,redis,model]"
	@touch $(STAMP)

install: $(STAMP)

# The bundled demo model is trained on first run (synthetic data, a few minutes on CPU).
DEMO_MODEL ?= $(or $(CDSFUSION_MODEL_DIR),$(or $(CDSFUSION_DATA_DIR),var)/models/demo)

$(DEMO_MODEL)/model.json: | $(STAMP)
	$(BIN)/cdsfusion train --config demo --patients 3000 --output $(DEMO_MODEL)

# The embedded demo accepts CDS Hooks calls without an EHR's signed JWT (explicit, loudly
# logged, refused in production); set CDSFUSION_CDS_HOOKS_AUTH_DISABLED=false to verify.
run: install $(DEMO_MODEL)/model.json
	$(BIN)/cdsfusion db upgrade
	CDSFUSION_CDS_HOOKS_AUTH_DISABLED=$${CDSFUSION_CDS_HOOKS_AUTH_DISABLED:-true} exec $(BIN)/cdsfusion serve

# Against the engine `make run` started (in another terminal).
demo: install
	$(BIN)/cdsfusion demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest -m "not integration and not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
