# make demo: set up .venv and run the whole job on the built-in synthetic catalog.
# make test: set up .venv and run the fast test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint bench clean browser

$(STAMP): requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

# Headless Chromium (Debian's package) for the browser test of the review page (scripts/report.py);
# installed with apt where missing; without apt the test is skipped with its reason.
browser:
	@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium)

test: $(STAMP) browser
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf work data/synthetic
