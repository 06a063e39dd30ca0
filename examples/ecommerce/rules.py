"""The e-commerce pipeline's rule that a field condition cannot say (pipeline.toml names it).

A rule function takes the decoded record and the Kafka timestamp of the record that carries it
(epoch ms, None when unknown) and returns None or ``"<code>: <detail>"``; its codes are
declared beside it (``codes = [...]``).

>>> signup_not_after_update({"signup_time": 5, "updated_at": 4}, None)
'bad_signup_time: after updated_at'
>>> signup_not_after_update({"signup_time": None, "updated_at": 4}, None)
'bad_signup_time: None'
>>> signup_not_after_update({"signup_time": 4, "updated_at": 4}, None) is None
True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def signup_not_after_update(rec: Mapping[str, Any], now_ms: int | None) -> str | None:
    """A user's signup_time is an epoch-ms time not after the version's updated_at."""
    signup, updated = rec.get("signup_time"), rec.get("updated_at")
    if not _is_int(signup):
        return f"bad_signup_time: {signup!r}"
    if _is_int(updated) and signup > updated:
        return "bad_signup_time: after updated_at"
    return None
