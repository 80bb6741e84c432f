# pynet: see README.md. Every target works from a fresh checkout as root.
PYTHON ?= python3
VENV := .venv
NAME ?= pynet
TAG ?= latest
PYTEST_ARGS ?=

.PHONY: venv run test unit lint plugin plugin-rm bench scale image clean

venv: $(VENV)/bin/pynet

$(VENV)/bin/pynet: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

run: venv
	$(VENV)/bin/pynet --name $(NAME) serve

image:
	scripts/busybox-image.sh

test: venv image
	$(VENV)/bin/pytest -v --durations=25 $(PYTEST_ARGS)

unit: venv
	$(VENV)/bin/pytest -v tests/unit

lint: venv
	$(VENV)/bin/ruff check plugin tests scripts lab

plugin: venv
	scripts/build-plugin.sh $(NAME) $(TAG)

plugin-rm:
	scripts/build-plugin.sh --remove $(NAME) $(TAG)

bench: venv image
	$(VENV)/bin/python scripts/bench.py

scale: venv image
	$(VENV)/bin/python scripts/scale.py

clean:
	rm -rf $(VENV) *.egg-info
