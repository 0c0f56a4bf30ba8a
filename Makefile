# Every target installs what it needs into .venv (Python 3.11) first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
SOURCES := setup.py $(wildcard sprites_twisted/*.py) $(wildcard twisted/plugins/*.py)

.PHONY: all test demo lint format typecheck docs bench check clean plugins venv

all: test

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	touch $@

# The project is installed (not editable) so that twisted/plugins lands in
# site-packages, where Twisted's plugin system finds it; reinstalled when a
# source file changes.
$(VENV)/.installed-%: $(VENV)/.created $(SOURCES)
	$(PIP) install '.[$*]'
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@

venv: $(VENV)/.installed-test

test: $(VENV)/.installed-test
	$(PY) -m twisted.trial --reporter=text tests

demo: $(VENV)/.installed-test
	$(PY) -m sprites_twisted.demo

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check sprites_twisted tests twisted bench
	$(VENV)/bin/ruff format --check sprites_twisted tests twisted bench

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format sprites_twisted tests twisted bench
	$(VENV)/bin/ruff check --fix sprites_twisted tests twisted bench

typecheck: $(VENV)/.installed-dev
	$(VENV)/bin/mypy sprites_twisted

docs: $(VENV)/.installed-docs
	$(VENV)/bin/sphinx-build -W -q -b html docs docs/_build/html

bench: $(VENV)/.installed-bench
	$(PY) bench/run.py

plugins: $(VENV)/.installed-test
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	$(VENV)/bin/twistd --help | grep -q sprites-proxy && echo "twistd lists sprites-proxy"

check: lint typecheck test docs

clean:
	rm -rf $(VENV) _trial_temp* docs/_build build dist *.egg-info
