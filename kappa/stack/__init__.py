"""The local stack behind ``kappa up``: a real Kafka broker and schema registry, no Docker."""

from kappa.stack.manager import ComponentStatus, Endpoints, down, endpoints, status, up

__all__ = ["ComponentStatus", "Endpoints", "down", "endpoints", "status", "up"]
