# The two commands: `make run` starts the embedded stack in the foreground,
# `make test` runs the whole suite. Both do every set-up step themselves.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test setup system-deps lint unit integration bench clean

run: setup
	$(BIN)/payledger run

# Everything the tests run (Kafka jars, Postgres, SoftHSM2, the provider and
# anchoring peers) is installed first, so no test's time limit covers a cold build.
test: setup lint
	$(BIN)/payledger infra install
	$(BIN)/python -m pytest tests

setup: system-deps $(STAMP)

# JDK and Maven run the Kafka broker; Postgres and SoftHSM2 are installed by
# `payledger infra up` itself when missing, so they are not listed here.
system-deps:
	@command -v java >/dev/null && command -v mvn >/dev/null || { \
	  echo "installing a JDK and Maven from Debian"; \
	  apt-get update -qq && apt-get install -y -qq openjdk-17-jdk-headless maven; }

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest tests/unit

integration: setup
	$(BIN)/python -m pytest tests/integration

bench: setup
	$(BIN)/python bench/envelope.py

clean:
	-$(BIN)/payledger infra down
	rm -rf .state
