# The two set-up commands of the README, and helpers. Each target installs what
# it needs into .venv (pinned by constraints.txt) before running.
PYTHON ?= python3
VENV   ?= .venv
PIP     = $(VENV)/bin/pip install -q -c constraints.txt

.PHONY: demo test lint bench clean shellcheck

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e ".[quality]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e ".[dev]"
	touch $@

demo: $(VENV)/.installed          ## build a stdlib dataset, train the tiny model (a few minutes on CPU)
	$(VENV)/bin/snowjax demo

test: $(VENV)/.installed-dev shellcheck  ## the whole test suite (what CI runs)
	$(VENV)/bin/ruff check snowjax tests benchmarks
	$(VENV)/bin/pytest -q --durations=15

# tests/launch runs shellcheck on launch/ (and fails without it when CI is set): install
# Debian's package when it is missing and apt-get can (root, as on CI's machine).
shellcheck:
	@command -v shellcheck >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq shellcheck >/dev/null) || echo "warning: apt-get could not install shellcheck"; \
	  else echo "warning: shellcheck is missing (apt-get install shellcheck)"; fi; }

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check snowjax tests benchmarks
	$(VENV)/bin/ruff format --check snowjax tests benchmarks

bench: $(VENV)/.installed-dev     ## CPU benchmarks (each beside its baseline): train step, loader, generation, curation, annotator, serve
	$(VENV)/bin/python benchmarks/train_step.py
	$(VENV)/bin/python benchmarks/loader.py
	$(VENV)/bin/python benchmarks/generate.py
	$(VENV)/bin/python benchmarks/curation.py
	$(VENV)/bin/python benchmarks/annotator.py
	$(VENV)/bin/python benchmarks/serve.py

clean:
	rm -rf $(VENV) runs .pytest_cache
