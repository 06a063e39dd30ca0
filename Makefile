SHELL := /bin/bash
.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E "^[a-z-]+:.*## " $(MAKEFILE_LIST) | awk -F ":.*## " '{printf "  %-14s %s\n", $$1, $$2}'

.venv/.kappa-installed: pyproject.toml
	bash .ci/bootstrap

setup: .venv/.kappa-installed  ## create .venv and install Kappa (+ Java, Maven, Prometheus when missing)

demo: setup  ## run the end-to-end demo on the embedded defaults
	.venv/bin/kappa demo

test: setup  ## run the whole test suite (unit + integration on a real local stack)
	.venv/bin/python -m pytest

unit: setup  ## run the fast unit tests only
	.venv/bin/python -m pytest tests/unit

reliability: setup  ## run the reliability suite alone (kill -9, broker restart, sink outage, bad input)
	.venv/bin/python -m pytest tests/reliability -m reliability -rA --durations=0

lint: setup  ## ruff + mypy
	.venv/bin/ruff check . && .venv/bin/mypy kappa schemas producers stream_processors sinks

.PHONY: help setup demo test unit reliability lint
