# kcauth: everything a fresh machine needs comes from here.
#   make test          install (venv, Python packages, Maven for the Keycloak download) and run the tests
#   make pluginserver  run the plugin server as Kong would, listening on ./.run/kcauth.socket
#   make reference     print the config reference table that README.md carries

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: test install system-deps pluginserver reference clean

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

install: system-deps $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Debian packages the test suite needs: Maven fetches the Keycloak server distribution
# (tests/keycloak/bootstrap.py); redis-server backs the shared-cache tests (tests/services/redis.py).
SYSTEM_PACKAGES := $(if $(shell command -v mvn),,maven) $(if $(shell command -v redis-server),,redis-server)

system-deps:
	@if [ -n "$(strip $(SYSTEM_PACKAGES))" ]; then \
	  echo "installing $(strip $(SYSTEM_PACKAGES)) with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	fi

pluginserver: install
	mkdir -p .run
	PATH="$(abspath $(VENV))/bin:$$PATH" kcauth-pluginserver --kong-prefix "$(abspath .run)" --socket-name kcauth.socket

reference: install
	@$(PY) -m kong_plugin_kcauth.schema

clean:
	rm -rf $(VENV) .run .pytest_cache
