# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: test demo bench lint typing docs clean kafka-start kafka-stop postgres-start postgres-stop

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,lint,docs,metrics,bench,cli,sql,json]'
	touch $@

## everything: unit, broker (a real Kafka started here), lint, typing, docs
test: $(VENV)/.installed
	VENV=$(VENV) scripts/run-tests

## the split-services demo, on librdkafka's mock cluster unless KAFKA_BOOTSTRAP is set
demo: $(VENV)/.installed
	$(PY) -m examples.demo

bench: $(VENV)/.installed
	VENV=$(VENV) scripts/run-bench

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check eventbus bridge tests bench examples
	$(VENV)/bin/ruff format --check eventbus bridge

typing: $(VENV)/.installed
	$(VENV)/bin/mypy

docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir .cache/site

kafka-start:
	scripts/kafka start

kafka-stop:
	scripts/kafka stop

postgres-start:
	scripts/postgres start

postgres-stop:
	scripts/postgres stop

clean:
	rm -rf $(VENV) .cache/site .mypy_cache .ruff_cache .pytest_cache
