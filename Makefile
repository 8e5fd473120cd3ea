# kcauth: everything a fresh machine needs comes from here. `make help` lists the targets.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: help test lint install system-deps demo pluginserver spec-http bench soak reference dist images push-images clean

help:  ## this list
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-13s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: DEMO_PORT=$(DEMO_PORT) DEMO_ADMIN_PORT=$(DEMO_ADMIN_PORT) PYTEST_WORKERS=$(PYTEST_WORKERS)" \
	  "PYTEST_ARGS=... BENCH_ARGS=... SOAK_ARGS=... GATEWAY=$(GATEWAY) ADMIN=$(ADMIN)"

GATEWAY ?= http://127.0.0.1:8000
ADMIN   ?= http://127.0.0.1:8001

# Two workers (pytest-xdist): most tests wait on timers and sockets, so two run side by side on two
# cores; tests that must not run side by side share a worker (tests/parallel.py).
PYTEST_WORKERS ?= 2

test: install lint  ## install (venv, packages, Maven for Keycloak), lint, the whole suite (~8 min, 2 cores)
	$(PY) -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# ruff on the package and the tests, mypy (strict) on the package: both configured in pyproject.toml.
lint: install  ## ruff on the package and tests, mypy --strict on the package
	$(PY) -m ruff check kong_plugin_kcauth tests
	$(PY) -m mypy

install: system-deps $(VENV)/.installed  ## the venv with the package and its test tools

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

system-deps:  ## Debian packages: maven, redis-server, npm (apt-get: root the first time)
	@if [ -n "$(strip $(SYSTEM_PACKAGES))" ]; then \
	  echo "installing $(strip $(SYSTEM_PACKAGES)) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	fi

DEMO_PORT       ?= 8000
DEMO_ADMIN_PORT ?= 8001

demo: install  ## Keycloak, Redis, echo, plugin server and a Kong stand-in on loopback (DEMO_PORT=8000)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m tests.demo --port $(DEMO_PORT) --admin-port $(DEMO_ADMIN_PORT)

spec-http: install  ## spec/*.yaml over HTTP against a running gateway (GATEWAY=..., ADMIN=...)
	$(PY) -m tests.spec_http --gateway $(GATEWAY) --admin $(ADMIN)

bench: install  ## the benchmark, into .run/bench-results.md (BENCH_ARGS=--quick for a short run)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m tests.bench $(BENCH_ARGS)

soak: install  ## 10 minutes at saturation watching memory (SOAK_ARGS=--minutes 1)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m tests.bench.soak $(SOAK_ARGS)

pluginserver: install  ## the plugin server as Kong runs it, on ./.run/kcauth.socket
	mkdir -p .run
	PATH="$(abspath $(VENV))/bin:$$PATH" kcauth-pluginserver --kong-prefix "$(abspath .run)" --socket-name kcauth.socket

reference: install  ## print the config reference table of docs/configuration.md
	@$(PY) -m kong_plugin_kcauth.config

dist: install  ## the wheel and sdist into dist/, as a release publishes them
	rm -rf dist
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist .
	$(PY) -c "from setuptools import build_meta; build_meta.build_sdist('dist')"

# Images (Docker): Kong with kcauth inside (kong/Dockerfile), and the plugin server alone for a
# sidecar beside Kong's stock image (kong/pluginserver.Dockerfile; deploy/kubernetes/).
VERSION      ?= $(shell $(PYTHON) -c "import tomllib; print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")
IMAGE_PREFIX ?= kcauth/

images:  ## kcauth/kong-kcauth and kcauth/kcauth-pluginserver images, tagged VERSION (IMAGE_PREFIX=kcauth/)
	docker build -f kong/Dockerfile -t $(IMAGE_PREFIX)kong-kcauth:$(VERSION) .
	docker build -f kong/pluginserver.Dockerfile -t $(IMAGE_PREFIX)kcauth-pluginserver:$(VERSION) .

push-images:
	docker push $(IMAGE_PREFIX)kong-kcauth:$(VERSION)
	docker push $(IMAGE_PREFIX)kcauth-pluginserver:$(VERSION)

clean:  ## remove the venv and what runs left behind
	rm -rf $(VENV) .run .pytest_cache dist
