"""Helpers the tests (and benchmarks) share; not part of the product packages, which never import them."""
