"""Window state of earlier releases, read by the window operator for upgrades.

State and partials written before the generic window operator existed held two key fields
and two aggregates under fixed names (``c``, ``u`` and ``n``, ``r``); :func:`upgrade_legacy`
reads them in the operator's format, so an upgraded worker resumes from its table and from the
partials still in the topic. The operator itself
(:mod:`stream_processors.operators.windows`) names no field.

>>> upgrade_legacy({"s": 0, "c": "a", "u": "b", "p": 1, "n": 2, "r": 3.5, "o": 7, "wm": 9})
{'s': 0, 'k': ['a', 'b'], 'p': 1, 'a': [2, 3.5], 'o': 7, 'wm': 9}
"""

from __future__ import annotations

from typing import Any

__all__ = ["upgrade_legacy"]


def upgrade_legacy(d: dict[str, Any]) -> dict[str, Any]:
    """A partial or a stored total of the pre-operator format in the operator's (others unchanged)."""
    if "k" in d or "c" not in d:
        return d
    if "n" in d:  # a partial
        return {"s": d["s"], "k": [d["c"], d["u"]], "p": d["p"], "a": [d["n"], d["r"]], "o": d["o"],
                "wm": d["wm"]}
    return {"s": d["s"], "k": [d["c"], d["u"]], "p": d["p"], "r": d["r"], "f": d["f"], "a": d.get("a", -1)}
