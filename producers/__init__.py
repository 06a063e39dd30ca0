"""Publish events to Kappa's input topics: the library behind ``kappa produce``."""

from producers.base import Publisher, PublishFailed, PublishSummary

__all__ = ["PublishFailed", "PublishSummary", "Publisher"]
