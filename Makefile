# The two commands of the README: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install what they need on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: setup demo test test-slow clean

setup: $(VENV)/.attnlab-installed

$(VENV)/.attnlab-installed: pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh

## Train the tiny GPT baseline on the built-in Shakespeare corpus (about 8 minutes on 2 CPU cores).
demo: setup
	$(PY) -m attnlab train --config benchmarks/demo.yaml --out-dir $(RUN)
	$(PY) -m attnlab generate $(RUN) --prompt "ROMEO:" --max-new-tokens 240

## The test suite (CPU, a few minutes). Slow checks: make test-slow.
test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs .pytest_cache
