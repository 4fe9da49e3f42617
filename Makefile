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

.PHONY: demo test lint typecheck setup bench clean lock

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCKS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements/no-deps.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
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

test: lint typecheck
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/embeddings.py

clean:
	rm -rf $(VENV) .llmops .pytest_cache .mypy_cache .ruff_cache
