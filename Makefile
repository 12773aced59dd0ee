# Tollgate: `make run` starts the whole system, `make test` checks all of it.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv run test lint typecheck unit bench test-reliability deploy-tools deploy-check image fmt lock clean browser test-browser screenshots vendor-axe

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP) ## create .venv and install the project with its pinned dependencies

run: $(STAMP) ## start broker, PostgreSQL and every service (Ctrl-C stops them all)
	$(VENV)/bin/tollgate run

lint: $(STAMP) ## ruff lint and format check; import contracts (libs <- services <- tools)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(STAMP) ## mypy --strict over libs, services, tools, tests and bench
	$(VENV)/bin/mypy

deploy-tools: $(STAMP) ## install helm, promtool and kubernetes-validate for the deploy checks
	bash deploy/install-tools.sh

deploy-check: $(STAMP) deploy-tools ## render, lint and validate the chart; test the Prometheus rules and dashboards
	$(PY) -m pytest tests/deploy

image: ## build the container image (needs a Docker engine)
	docker build -f deploy/Dockerfile -t tollgate:$$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml) .

browser: ## install Debian's chromium for the browser tests and screenshots when it is missing
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium fonts-liberation >/dev/null; }

test-browser: $(STAMP) browser ## the console's browser and accessibility tests only
	$(PY) -m pytest tests/browser

screenshots: $(STAMP) browser ## a screenshot of every console page, from a simulated dataset, into docs/
	$(PY) -m tests.browser.screenshots docs

AXE_VERSION := 4.14.1
AXE_SHA256 := e6b0ce02b84d892e2e33e403485e7f3d6c29e2be6df65daf44d89ba564139745
vendor-axe: ## fetch axe-core $(AXE_VERSION) with npm, check its checksum, vendor it for the tests
	@tmp=$$(mktemp -d) && cd $$tmp && npm pack --silent axe-core@$(AXE_VERSION) >/dev/null \
	  && echo "$(AXE_SHA256)  axe-core-$(AXE_VERSION).tgz" | sha256sum -c - \
	  && tar xzf axe-core-$(AXE_VERSION).tgz \
	  && cp package/axe.min.js package/LICENSE package/LICENSE-3RD-PARTY.txt $(CURDIR)/tests/browser/vendor/axe-core/ \
	  && rm -rf $$tmp

test: $(STAMP) deploy-tools browser lint typecheck ## lint, type check and the whole pytest suite
	$(PY) -m pytest

unit: $(STAMP) ## unit tests only (no I/O)
	$(PY) -m pytest tests/unit

bench: $(STAMP) ## benchmarks: prints a table and writes bench/results.json
	$(PY) -m bench

test-reliability: $(STAMP) ## the long fault-injection suite
	TOLLGATE_RELIABILITY_LONG=1 $(PY) -m pytest tests/reliability -m reliability

fmt: $(STAMP) ## format and autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

lock: $(STAMP) ## re-pin constraints.txt from the current environment
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e' > constraints.txt

clean: ## remove the virtualenv and local state (embedded PostgreSQL data included)
	rm -rf $(VENV) .tollgate .tools .mypy_cache .ruff_cache .pytest_cache
