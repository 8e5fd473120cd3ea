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

# Maven fetches the Keycloak server distribution for the test suite (tests/keycloak/bootstrap.py).
system-deps:
	@command -v mvn >/dev/null 2>&1 || { \
	  echo "installing maven (needed to download Keycloak from Maven Central)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven >/dev/null; }

pluginserver: install
	mkdir -p .run
	PATH="$(abspath $(VENV))/bin:$$PATH" kcauth-pluginserver --kong-prefix "$(abspath .run)" --socket-name kcauth.socket

reference: install
	@$(PY) -m kong_plugin_kcauth.schema

clean:
	rm -rf $(VENV) .run .pytest_cache
