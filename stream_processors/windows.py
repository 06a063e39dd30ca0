"""The e-commerce pipeline's revenue windows, bound to the generic window operator.

``revenue_per_minute``: event-time tumbling minutes of valid, deduplicated orders by
``(category, currency)`` with ``orders = count`` and ``revenue = sum(amount)``; window keys are
``window_start|category|currency`` (the contract). The operator itself
(:mod:`stream_processors.operators.windows`) names none of these fields.

State and partials written before the operator existed name the key fields and values
(``c``, ``u``, ``n``, ``r``); :func:`upgrade_legacy` reads them, so an upgraded worker resumes
from its table and from the partials still in the topic.

>>> spec = revenue_spec(30_000)
>>> spec.size_ms, spec.hop_ms, spec.grace_ms, spec.keys, spec.key(60_000, ["books", "EUR"])
(60000, 60000, 30000, ('category', 'currency'), '60000|books|EUR')
>>> upgrade_legacy({"s": 0, "c": "books", "u": "EUR", "p": 1, "n": 2, "r": 3.5, "o": 7, "wm": 9})
{'s': 0, 'k': ['books', 'EUR'], 'p': 1, 'a': [2, 3.5], 'o': 7, 'wm': 9}
"""

from __future__ import annotations

from typing import Any

from stream_processors.operators.windows import WindowSpec, parse_window

__all__ = ["REVENUE_WINDOW", "revenue_spec", "upgrade_legacy"]

REVENUE_WINDOW: dict[str, Any] = {
    "stream": "orders",
    "size": "1m",
    "keys": ["category", "currency"],
    "aggregations": {"orders": "count", "revenue": "sum(amount)"},
}
"""The ``[windows.revenue_per_minute]`` declaration of the e-commerce pipeline (grace from settings)."""


def revenue_spec(grace_ms: int) -> WindowSpec:
    """The revenue window spec with ``grace_ms`` (``KAPPA_WINDOW_GRACE_SECONDS``)."""
    return parse_window("revenue_per_minute", REVENUE_WINDOW, grace_ms)


def upgrade_legacy(d: dict[str, Any]) -> dict[str, Any]:
    """A partial or a stored total of the pre-operator format in the operator's (others unchanged)."""
    if "k" in d or "c" not in d:
        return d
    if "n" in d:  # a partial
        return {"s": d["s"], "k": [d["c"], d["u"]], "p": d["p"], "a": [d["n"], d["r"]], "o": d["o"],
                "wm": d["wm"]}
    return {"s": d["s"], "k": [d["c"], d["u"]], "p": d["p"], "r": d["r"], "f": d["f"], "a": d.get("a", -1)}
