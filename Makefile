# Two entry points for a fresh clone (Python, pip, venv, git, make):
#   make run   - set up, then start the demo (see README)
#   make test  - set up, then run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint screenshots bench bench-deps system-deps clean venv-locked

LOCK := .venv.lock

# `make run` and `make test` started together both want the venv: the second
# waits on the lock (flock, util-linux) and then finds the stamp fresh.
$(STAMP): pyproject.toml
	flock $(LOCK) $(MAKE) --no-print-directory venv-locked

venv-locked:
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then exit 0; fi; \
	set -e; \
	$(PYTHON) -m venv $(VENV); \
	$(BIN)/python -m pip install -q --upgrade pip; \
	$(BIN)/python -m pip install -q -e '.[test]'; \
	touch $(STAMP)

# Real tools the tests use: curl (a real HTTP client), systemd-analyze
# (unit verification), redis-server (the tracker cluster tests start their own)
# chromium + chromium-driver (the web UI's browser tests; selenium is
# pointed at /usr/bin/chromedriver and never downloads a browser), and
# iproute2 + tcpdump (the tunnel tests build two homes and a relay in network
# namespaces and capture on the relay), iptables + conntrack (the NAT lab of
# tests/nat_lab.py: home routers that masquerade and filter, and their NAT
# tables read for diagnostics).
# Installed with apt when missing and we are root.
system-deps:
	@missing=""; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	command -v tcpdump >/dev/null 2>&1 || missing="$$missing tcpdump"; \
	command -v iptables >/dev/null 2>&1 || missing="$$missing iptables"; \
	command -v conntrack >/dev/null 2>&1 || missing="$$missing conntrack"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "warning: missing$$missing; the tests that need them will fail or skip" >&2; fi; \
	fi

# Reference tools the benchmarks compare against (not needed by the tests):
# aria2c for bench/folder.py (nginx, socat and curl for the other benches).
bench-deps:
	@missing=""; \
	command -v aria2c >/dev/null 2>&1 || missing="$$missing aria2"; \
	command -v nginx >/dev/null 2>&1 || missing="$$missing nginx"; \
	command -v socat >/dev/null 2>&1 || missing="$$missing socat"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "warning: missing$$missing; the benchmarks that need them exit 2" >&2; fi; \
	fi

run: $(STAMP)
	$(BIN)/python -m flashback.demo

test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# docs/screenshots: every view of the web UI at 1280 and 400 px, taken by the
# browser tour (tests/test_ui_tour.py) with real content
screenshots: $(STAMP) system-deps
	FLASHBACK_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q tests/test_ui_tour.py

clean:
	rm -rf $(VENV) $(LOCK) .pytest_cache
