# Ferry's two front doors: `make demo` (the app on a 3-node lab) and `make test`.
# Both do all their own set-up on a fresh Debian 12 machine, as root.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LAB := lab/ferry-lab
# The tests use a lab of their own, so a running demo is never disturbed.
TEST_LAB := FERRY_LAB_NAME=ferrytest FERRY_LAB_NET=78
TEST_DB := postgresql+psycopg://postgres@127.0.0.1:5432/ferry_test
PYTEST_ARGS ?=
# Random faults are timed at random: one green run proves little, so make faults runs two seeds.
FAULT_SEEDS ?= 6 7

.PHONY: deps venv services test container demo bench faults lab-down clean

deps: ## system packages for the lab, the app and the tests (apt, only what is missing)
	$(LAB) install-deps

$(VENV)/.installed: requirements.txt tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt -r tests/requirements.txt
	touch $@

venv: deps $(VENV)/.installed

services: deps ## Redis and PostgreSQL, started only where none runs
	.ci/services

test: venv services ## the whole suite: unit, SQLite and PostgreSQL, Redis, the lab, the browser
	$(TEST_LAB) FERRY_TEST_DATABASE_URL=$(TEST_DB) $(PY) -m pytest -q -p no:cacheprovider --durations=15 tests $(PYTEST_ARGS)

container: venv services ## build the Containerfile with podman, run it on the test database, sign in
	FERRY_TEST_DATABASE_URL=$(TEST_DB) $(PY) -m pytest -q -p no:cacheprovider -m container tests/container/test_container.py $(PYTEST_ARGS)

demo: venv services ## a 3-node lab with servers, the app and a worker on http://127.0.0.1:8080
	$(PY) -m lab.demo

bench: venv services ## benchmarks against bare virsh, results in bench/results/
	$(TEST_LAB) $(PY) -m bench

faults: venv services ## node-output fuzzing (10000 inputs per parser), 104 random fault injections for each of two seeds (bench/results/faults*), then a fault at every step boundary (fault-matrix.*)
	FERRY_FUZZ_EXAMPLES=10000 $(PY) -m pytest -q -p no:cacheprovider tests/unit/test_node_output_fuzz.py; fuzz=$$?; \
	random=0; for seed in $(FAULT_SEEDS); do $(TEST_LAB) $(PY) -m bench.faults --seed $$seed || random=1; done; \
	$(TEST_LAB) $(PY) -m bench.fault_matrix && [ $$fuzz -eq 0 ] && exit $$random

lab-down: ## take both labs down (demo and test)
	-$(LAB) down
	-$(TEST_LAB) $(LAB) down
