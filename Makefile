# The two commands (README): `make up` runs flowmas on embedded defaults; `make test` runs every test.
# Both build .venv from requirements.lock first; nothing has to be installed by hand.
PYTHON ?= python3
UV := .tools/bin/uv
VENV := .venv
STAMP := $(VENV)/.synced

.PHONY: up test check bench lock clean

up: $(STAMP)
	$(VENV)/bin/flowmas up

test: $(STAMP)
	$(VENV)/bin/python -m pytest

# Lint and types, clean: .ci/run runs this before `make test`.
check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Benchmarks print ratios against baselines measured in the same run (bench/*.py docstrings say what and how).
bench: $(STAMP)
	$(VENV)/bin/python bench/assets.py
	$(VENV)/bin/python bench/api.py
	$(VENV)/bin/python bench/files.py
	$(VENV)/bin/python bench/graph.py
	$(VENV)/bin/python bench/cache.py
	$(VENV)/bin/python bench/llm.py

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==0.13.9

$(STAMP): requirements.lock pyproject.toml | $(UV)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(UV) pip sync --quiet --compile-bytecode --python $(VENV)/bin/python --require-hashes requirements.lock
	$(UV) pip install --quiet --python $(VENV)/bin/python --no-deps -e .
	touch $(STAMP)

# Re-resolve after editing dependencies in pyproject.toml (overrides.txt explains the certifi override).
lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra test --override overrides.txt --generate-hashes \
		--python-version 3.11 --no-header -o requirements.lock

clean:
	rm -rf $(VENV) .tools
