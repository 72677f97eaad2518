# cdc-sync: `make demo` shows live sync on throwaway servers; `make test` runs the whole suite.
# Both install what they need: the venv, the Python packages, and mariadb-server / redis-server via apt
# when their binaries are missing.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: setup servers sysbench test unit lint demo demo-sentinel demo-cluster consistency consistency-memory consistency-compressed consistency-cluster consistency-sentinel consistency-gtid-resume bench clean

setup: servers $(STAMP)

# Install the server binaries only when they are missing.
servers:
	@missing=""; \
	{ command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ]; } || missing="$$missing mariadb-server"; \
	{ command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ]; } || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# sysbench (for bench/sysbench.py), installed only when missing.
sysbench:
	@if ! command -v sysbench >/dev/null; then \
		echo "installing: sysbench"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends sysbench; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,examples]'
	touch $(STAMP)

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

unit: setup
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check cdc_sync tests tools bench examples
	$(BIN)/ruff format --check cdc_sync tests tools bench examples
	$(BIN)/mypy --strict cdc_sync examples

demo: setup
	$(BIN)/python tools/demo.py

demo-sentinel: setup
	$(BIN)/python tools/demo.py --topology sentinel

demo-cluster: setup
	$(BIN)/python tools/demo.py --topology cluster

# Benchmarks on throwaway servers: figures printed, written to bench/results.json (and bench/<scenario>.json),
# then a summary of the targets.
bench: setup sysbench
	rm -f bench/results.json
	$(BIN)/python bench/catchup.py
	$(BIN)/python bench/small_txns.py --profile bench/small_txns.profile
	$(BIN)/python bench/reader.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/verifier.py
	$(BIN)/python bench/sysbench.py
	$(BIN)/python bench/cluster.py
	$(BIN)/python bench/summary.py

# The long consistency profile (about 6 minutes, 12 fault kinds, about 30 faults); the short one (about 2 minutes)
# runs in `make test`. SEED=n varies the run, PROFILE=short picks the short one, FAULTS=redis_snapshot,ddl_fk
# injects only those kinds (see `python -m tests.consistency.checker --help`).
consistency: setup
	$(BIN)/python -m tests.consistency.checker --profile $${PROFILE:-long} --seed $${SEED:-1} $${FAULTS:+--faults $$FAULTS}

# The checker under memory pressure: Redis with maxmemory 4 MB under each eviction policy (short profile, about
# 2 minutes each; POLICIES=volatile-ttl picks some); the summary lines count evicted keys by kind.
POLICIES ?= allkeys-lru allkeys-random volatile-lru volatile-ttl
consistency-memory: setup
	@set -e; for policy in $(POLICIES); do \
	  $(BIN)/python -m tests.consistency.checker --profile $${PROFILE:-short} --seed $${SEED:-1} --memory $$policy \
	    $${FAULTS:+--faults $$FAULTS}; \
	done

# The checker on compressed binlogs (MariaDB log_bin_compress=ON; long profile, about 6 minutes).
consistency-compressed: setup
	$(BIN)/python -m tests.consistency.checker --profile $${PROFILE:-long} --seed $${SEED:-1} --compress \
	  $${FAULTS:+--faults $$FAULTS}

# The checker on a local Redis Cluster (3 primaries, 3 replicas) with CLUSTER FAILOVER, kill -9 of a primary, a
# reshard under load and a failover that loses acknowledged writes (long profile, about 6 minutes).
consistency-cluster: setup
	$(BIN)/python -m tests.consistency.checker --profile $${PROFILE:-long} --seed $${SEED:-1} --topology cluster \
	  $${FAULTS:+--faults $$FAULTS}

# The checker on a Sentinel set (a master, a replica, three Sentinels) with planned and lossy failovers.
consistency-sentinel: setup
	$(BIN)/python -m tests.consistency.checker --profile $${PROFILE:-long} --seed $${SEED:-1} --topology sentinel \
	  $${FAULTS:+--faults $$FAULTS}

# Where MariaDB resumes a GTID stream when sequence numbers are out of order (a table; about 40 s).
consistency-gtid-resume: setup
	$(BIN)/python -m tests.consistency.gtid_resume

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
