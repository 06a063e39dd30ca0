"""Kappa: a streaming-first event pipeline where batch is a replay of the log."""

from kappa.errors import KappaError
from kappa.settings import Settings, get_settings

__all__ = ["KappaError", "Settings", "get_settings"]
