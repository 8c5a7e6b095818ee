# Makefile -- build, run, test and benchmark entry points of circus-warden.
# Owns: the Python venv (.venv: circusd, MCP SDK, pytest), release builds, `make run`,
# `make test` (cargo tests + e2e suite) and `make bench`. Needs only python3 (3.11+),
# cargo, gcc/g++ and make; Python packages come from PyPI (pinned in tests/requirements.txt).

SHELL := /bin/bash
.DEFAULT_GOAL := build

PYTHON    ?= python3
VENV      := $(CURDIR)/.venv
VPY       := $(VENV)/bin/python
STAMP     := $(VENV)/.stamp
REQS      := tests/requirements.txt
BIN       := $(CURDIR)/target/release/circus-warden
TRANSPORT ?= http
PYTEST_ARGS ?=
BENCH_ARGS ?=
VENV_PATH := PATH=$(VENV)/bin:$$PATH

.PHONY: venv tools build run test test-rust test-e2e bench clean-venv

# Node 22 (the machine's Node is 20), the MCP conformance suite and the Inspector CLI, from npm.
TOOLS_STAMP := $(CURDIR)/.tools/.stamp
NPM_TOOLS   := node@22 @modelcontextprotocol/conformance@0.1.16 @modelcontextprotocol/inspector@2.12.0
tools: $(TOOLS_STAMP)
$(TOOLS_STAMP): Makefile
	mkdir -p .tools
	npm install --prefix .tools --no-audit --no-fund --loglevel=error $(NPM_TOOLS)
	.tools/node_modules/.bin/node --version
	@touch $@

venv: $(STAMP)

# A Debian python3 without python3-venv has no ensurepip: fall back to a pip-less venv
# filled by the system pip (pip >= 22.3 supports --python).
$(STAMP): $(REQS)
	@if ! test -x $(VPY); then \
	  $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV) && $(PYTHON) -m venv --without-pip $(VENV) && \
	    $(PYTHON) -m pip --python $(VPY) install --disable-pip-version-check -q pip; }; \
	fi
	$(VPY) -m pip install --disable-pip-version-check -q -r $(REQS)
	@touch $@

build:
	cargo build --release

run: venv build
	$(VENV_PATH) $(BIN) serve --transport $(TRANSPORT)

test: venv tools
	$(VENV_PATH) cargo test --release
	cargo build --release
	$(VENV_PATH) CIRCUS_WARDEN_BIN=$(BIN) $(VPY) -m pytest tests/e2e -q $(PYTEST_ARGS)

# the two halves of `test`, for iterating
test-rust: venv
	$(VENV_PATH) cargo test --release

test-e2e: venv tools build
	$(VENV_PATH) CIRCUS_WARDEN_BIN=$(BIN) $(VPY) -m pytest tests/e2e -q $(PYTEST_ARGS)

bench: venv build
	$(VENV_PATH) CIRCUS_WARDEN_BIN=$(BIN) $(VPY) bench/bench_status.py $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
