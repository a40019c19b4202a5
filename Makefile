# Two entry points, each self-contained on a fresh clone:
#   make demo   - creates .venv, installs runbus, builds the web UI's assets, runs a training
#                 loop logged end to end and shows it live in the UI
#   make test   - creates .venv, installs runbus with dev extras, builds the UI's assets,
#                 runs ruff, mypy --strict, pytest
#   make ui     - (re)builds the UI's third-party assets: npm ci in web/, copied to
#                 src/server/ui/vendor/ (git-ignored)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
UI_VENDOR := src/server/ui/vendor
# Rebuilt when the lockfile changes, once otherwise.
UI_STAMP := $(UI_VENDOR)/.built-$(shell sha1sum web/package-lock.json | cut -c1-12)

.PHONY: demo test lint typecheck bench clean ui

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

$(UI_STAMP): web/package-lock.json web/package.json | $(STAMP)
	$(BIN)/python -m server.ui_vendor
	rm -f $(UI_VENDOR)/.built-* && touch $(UI_STAMP)

ui: $(STAMP)
	$(BIN)/python -m server.ui_vendor
	rm -f $(UI_VENDOR)/.built-* && touch $(UI_STAMP)

demo: $(STAMP) $(UI_STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy src

test: lint typecheck $(UI_STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/hotpath.py

clean:
	rm -rf $(VENV) runs runs-server .pytest_cache .mypy_cache .ruff_cache web/node_modules $(UI_VENDOR)
