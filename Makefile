# The two commands of the README: `make demo` runs the main job, `make test` the
# whole test suite (ruff, mypy, pytest). Both create the venv and install qhpc
# into it on first use, so a fresh clone needs nothing else.
# Debian's /usr/bin/python3 where present: every user can read it, so co-located programs can
# run under an unprivileged uid and Slurm's hooks can run as SlurmUser (a pyenv under /root cannot).
PYTHON ?= $(shell test -x /usr/bin/python3 && /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null && echo /usr/bin/python3 || echo python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck unit clib clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "qhpc needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qhpc demo

test: lint typecheck unit

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The C client (clients/c: libqhpc, its examples in examples/c): libcurl and Jansson from
# Debian (scripts/cdeps.sh, installed once, needs root), then the project's own build.
clib:
	bash scripts/cdeps.sh >/dev/null
	$(MAKE) -C clients/c all examples

# The store's tests run against SQLite and a private PostgreSQL cluster (scripts/postgres.sh),
# the Slurm integration tests (tests/slurm) against a one-host Slurm cluster (scripts/slurm.sh,
# needs root), the console's browser tests (tests/web) in Debian's Chromium (scripts/browser.sh,
# installed once, needs root), the C client's (tests/cclient) against libqhpc built here
# (scripts/cdeps.sh installs its libraries, needs root). Each service is stopped afterwards
# only if this target started it. Where one cannot be had its tests are skipped, except under
# CI, where that is an error. (The C build is called as plain `make`: a $(MAKE) line would
# make `make -n unit` run this whole recipe, services included.)
unit: $(STAMP)
	if ! browser=$$(bash scripts/browser.sh); then \
		if [ "$${CI:-}" = true ]; then exit 1; fi; \
		echo "make unit: no Chromium (scripts/browser.sh); skipping the browser tests" >&2; browser=; \
	fi; \
	if bash scripts/cdeps.sh >/dev/null; then make -s -C clients/c all examples >&2 || exit 1; \
	elif [ "$${CI:-}" = true ]; then exit 1; \
	else echo "make unit: no libcurl/Jansson headers (scripts/cdeps.sh, needs root); skipping the C client tests" >&2; fi; \
	was=$$(bash scripts/postgres.sh status 2>/dev/null || true); \
	if ! url=$$(bash scripts/postgres.sh start); then \
		if [ "$${CI:-}" = true ]; then exit 1; fi; \
		echo "make unit: PostgreSQL did not start; skipping its tests" >&2; url=; \
	fi; \
	slurm_was=$$(bash scripts/slurm.sh status 2>/dev/null || true); slurm=; \
	if bash scripts/slurm.sh start >/dev/null; then slurm=1; \
	elif [ "$${CI:-}" = true ]; then exit 1; \
	else echo "make unit: Slurm did not start (needs root); skipping its tests" >&2; fi; \
	rc=0; QHPC_TEST_POSTGRES_URL=$$url QHPC_TEST_SLURM=$$slurm QHPC_TEST_BROWSER=$$browser \
		$(PY) -m pytest || rc=$$?; \
	if [ -n "$$url" ] && [ "$$was" != running ]; then bash scripts/postgres.sh stop; fi; \
	if [ -n "$$slurm" ] && [ "$$slurm_was" != running ]; then bash scripts/slurm.sh stop; fi; \
	exit $$rc

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache clients/c/build clients/c/build-asan
