# Every target installs what it needs into .venv (Python 3.11) first, with the
# exact versions of requirements/lock.txt; test-newest uses .venv-newest and
# the newest releases instead.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
LOCK := requirements/lock.txt
SOURCES := setup.py $(wildcard sprites_twisted/*.py) $(wildcard twisted/plugins/*.py)

# Load and subprocess tests: `make e2e`.  Everything else is `make test`,
# which runs once with the relay's fast path and once without it.  Each test
# class says which suite it belongs to (tests/suites.py: the @e2e and
# @e2eRelay decorators, or SUITE = E2E for a whole module), and
# `python -m tests.suites unit e2e` prints the trial names of those suites
# (e2e includes e2e-relay, the bulk transfers run again without the fast
# path).  $(call TRIAL,[ENV=VALUE] python,suites) runs them, and fails if
# the list cannot be made.
TRIAL = names="$$($(1) -m tests.suites $(2))" && $(1) -m twisted.trial --reporter=text $$names

.PHONY: all test e2e test-newest lock demo lint format typecheck docs bench bench-deps bench-interleave check clean plugins venv

all: test

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	touch $@

# The project is installed (not editable) so that twisted/plugins lands in
# site-packages, where Twisted's plugin system finds it; reinstalled when a
# source file or the lock changes.
$(VENV)/.installed-%: $(VENV)/.created $(SOURCES) $(LOCK)
	$(PIP) install -c $(LOCK) '.[$*]'
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@

venv: $(VENV)/.installed-test

test: $(VENV)/.installed-test
	$(call TRIAL,$(PY),unit)
	$(call TRIAL,SPRITES_TWISTED_FASTPATH=0 $(PY),unit)

e2e: $(VENV)/.installed-test
	$(call TRIAL,$(PY),e2e)
	$(call TRIAL,SPRITES_TWISTED_FASTPATH=0 $(PY),e2e-relay)

# The newest release of every dependency, in a virtualenv of its own: how we
# learn of the next upstream change before users do.
test-newest:
	rm -rf .venv-newest
	$(PYTHON) -m venv .venv-newest
	.venv-newest/bin/python -m pip --disable-pip-version-check -q install --upgrade pip setuptools wheel
	.venv-newest/bin/python -m pip --disable-pip-version-check -q install --upgrade --upgrade-strategy eager '.[test]'
	.venv-newest/bin/python -m pip --disable-pip-version-check freeze --exclude-editable | grep -iE '^(twisted|autobahn|txaio|zope.interface|service.identity|pyopenssl|cryptography)=='
	$(call TRIAL,.venv-newest/bin/python,unit e2e)
	$(call TRIAL,SPRITES_TWISTED_FASTPATH=0 .venv-newest/bin/python,unit e2e-relay)

# Refresh the lock from the newest releases (run make check e2e after it).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip --disable-pip-version-check -q install --upgrade pip
	.venv-lock/bin/python -m pip --disable-pip-version-check -q install '.[test,dev,docs,bench]'
	{ sed -n '/^#/p' $(LOCK); .venv-lock/bin/python -m pip --disable-pip-version-check freeze --exclude-editable | grep -v '^sprites-twisted'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock

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

# Parts, repeats and the WAN round trip: BENCH_ONLY=wan,small BENCH_REPEAT=3
# BENCH_RTT_MS=20 (or BENCH_ARGS="--only wan --repeat 3"); see bench/run.py.
bench: $(VENV)/.installed-bench bench-deps
	$(PY) bench/run.py $(BENCH_ARGS)

# Connection set-up of this tree against git revision (or source tree) BASE,
# both running at once, their connections alternating: bench/interleave.py.
bench-interleave: $(VENV)/.installed-bench
	@test -n "$(BASE)" || { echo "usage: make bench-interleave BASE=<git revision or source tree>"; exit 2; }
	$(PY) bench/interleave.py $(BASE) $(INTERLEAVE_ARGS)

# The pgbench part needs PostgreSQL: installed from Debian's packages when
# missing, if we are root with apt-get (not with BENCH_NO_APT=1, nor when
# BENCH_ONLY leaves the part out); otherwise the bench skips that part and
# says why.
bench-deps:
	@case ",$${BENCH_ONLY:-pgbench}," in *,pgbench,*) ;; *) exit 0;; esac; \
	if ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1 || [ "$${BENCH_NO_APT:-}" = 1 ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "bench: installing PostgreSQL (Debian's postgresql) for the pgbench part"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1 \
			|| echo "bench: could not install PostgreSQL; the pgbench part will be skipped"; \
	fi

plugins: $(VENV)/.installed-test
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	$(VENV)/bin/twistd --help | grep -q sprites-proxy && echo "twistd lists sprites-proxy"

check: lint typecheck test docs

clean:
	rm -rf $(VENV) .venv-newest _trial_temp* docs/_build build dist *.egg-info
