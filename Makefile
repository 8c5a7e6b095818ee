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
# cargo-nextest kills a hung test (.config/nextest.toml); plain cargo test where it is missing.
CARGO_TEST := $(if $(shell command -v cargo-nextest),cargo nextest run,cargo test)

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

# promtool and prometheus (tests/e2e/test_metrics.py) come from apt, like test-deploy's promtool.
.PHONY: system-tools
system-tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends prometheus; }

# The unprivileged user managed processes run as (policies/default.yaml's run_as; the image
# ships it as uid 10002). Created when running as root; the isolation tests need it.
RUN_USER ?= circus-run
.PHONY: run-user
run-user:
	@if [ "$$(id -u)" = 0 ] && ! id $(RUN_USER) >/dev/null 2>&1; then \
	  useradd --system --user-group --no-create-home --shell /usr/sbin/nologin $(RUN_USER) && echo "created the system user $(RUN_USER)"; \
	fi

test: venv tools system-tools run-user
	cargo fmt --check
	$(VENV_PATH) $(CARGO_TEST) --release
	cargo build --release
	$(BIN) policy test policies/tests
	$(VENV_PATH) CIRCUS_WARDEN_BIN=$(BIN) $(VPY) -m pytest tests/e2e -q $(PYTEST_ARGS)
	$(MAKE) test-deploy
	$(MAKE) test-container

# the two halves of `test`, for iterating
test-rust: venv
	$(VENV_PATH) $(CARGO_TEST) --release

test-e2e: venv tools build run-user
	$(VENV_PATH) CIRCUS_WARDEN_BIN=$(BIN) $(VPY) -m pytest tests/e2e -q $(PYTEST_ARGS)

bench: venv build
	$(VENV_PATH) CIRCUS_WARDEN_BIN=$(BIN) $(VPY) bench/bench_status.py $(BENCH_ARGS)
	cargo bench --bench ingest
	$(VENV_PATH) CIRCUS_WARDEN_BIN=$(BIN) BASELINE_BIN=$(BASELINE_BIN) $(VPY) bench/bench_admission.py $(BENCH_ARGS)
	@if [ -n "$(BASELINE_BIN)" ]; then echo "bench_status.py against the baseline $(BASELINE_BIN):"; \
	  $(VENV_PATH) $(VPY) bench/bench_status.py --bin "$(BASELINE_BIN)" $(BENCH_ARGS); fi

clean-venv:
	rm -rf $(VENV)

# Deployment artefacts (Dockerfile, charts/circus-warden), both run at the end of `test`:
#   test-deploy     lint, schema, kubernetes-validate, checkov, hadolint, promtool rule tests and
#                   a local boot of the rendered pod driven over MCP (tests/deploy/run.sh);
#   test-container  builds the Dockerfile for real with a local Docker engine and runs the image
#                   (tests/deploy/container_smoke.sh; root, apt, several minutes).
# Their tools live in .tools/deploy-venv (pinned in tests/deploy/requirements.txt): checkov
# needs packaging<24, pytest 9 in .venv needs >=24. promtool comes from apt (`prometheus`).
DEPLOY_VENV  := $(CURDIR)/.tools/deploy-venv
DEPLOY_STAMP := $(DEPLOY_VENV)/.stamp
DEPLOY_REQS  := tests/deploy/requirements.txt

.PHONY: deploy-tools test-deploy test-container
deploy-tools: $(DEPLOY_STAMP)
$(DEPLOY_STAMP): $(DEPLOY_REQS)
	@if ! test -x $(DEPLOY_VENV)/bin/python; then \
	  $(PYTHON) -m venv $(DEPLOY_VENV) || { rm -rf $(DEPLOY_VENV) && $(PYTHON) -m venv --without-pip $(DEPLOY_VENV) && \
	    $(PYTHON) -m pip --python $(DEPLOY_VENV)/bin/python install --disable-pip-version-check -q pip; }; \
	fi
	$(DEPLOY_VENV)/bin/python -m pip install --disable-pip-version-check -q -r $(DEPLOY_REQS)
	@touch $@

test-deploy: venv deploy-tools build
	@command -v promtool >/dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends prometheus; }
	tests/deploy/run.sh

test-container: venv deploy-tools
	tests/deploy/container_smoke.sh
