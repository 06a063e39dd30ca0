SHELL := /bin/bash
.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E "^[a-z-]+:.*## " $(MAKEFILE_LIST) | awk -F ":.*## " '{printf "  %-14s %s\n", $$1, $$2}'

.venv/.kappa-installed: pyproject.toml
	bash .ci/bootstrap

setup: .venv/.kappa-installed  ## create .venv and install Kappa (+ Java, Maven, Prometheus when missing)

demo: setup  ## run the end-to-end demo on the embedded defaults
	.venv/bin/kappa demo

test: setup  ## unit + integration tests on a real local stack (the reliability suite: make reliability)
	.venv/bin/python -m pytest -m "not reliability" --durations=15

unit: setup  ## run the fast unit tests and the packages' doctests
	.venv/bin/python -m pytest tests/unit kappa schemas producers stream_processors sinks

reliability: setup  ## run the reliability suite alone (kill -9, broker restart, sink outage, bad input)
	.venv/bin/python -m pytest -m reliability -rA --durations=0

lint: setup  ## ruff + mypy
	.venv/bin/ruff check . && .venv/bin/mypy kappa schemas producers stream_processors sinks

.PHONY: help setup demo test unit reliability lint
