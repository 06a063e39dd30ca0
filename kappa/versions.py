"""Which pipeline version is live, and which one ``kappa run`` runs.

After ``kappa replay --swap`` the swapped version is the live one: ``kappa run`` without
``--version`` must feed the tables the serving views read, or the views go stale while another
version's tables grow. The serving views know their version (:func:`sinks.views.serving_version`),
but with the embedded engine only the process that owns ``KAPPA_HOME/clickhouse`` can read them,
and ``kappa run`` chooses its version before it starts that process (its sink). So the swap also
records the live version in ``KAPPA_HOME/live_version.json`` (written atomically), next to the
per-version records of ``kappa replay`` (``KAPPA_HOME/versions/<V>.json``).

>>> next_free("v2", ["v1", "v2", "v3"])
'v4'
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kappa.errors import KappaError
from kappa.settings import Settings

__all__ = ["LIVE_FILE", "Live", "VersionNotServing", "choose_run_version", "known_versions",
           "next_free", "read_live", "record_live"]

LIVE_FILE = "live_version.json"
"""Under ``KAPPA_HOME``: the version the serving views read since the last swap."""


class VersionNotServing(KappaError):
    """An explicitly requested version is not the one the serving views read."""


@dataclass(frozen=True)
class Live:
    """The live version as recorded by the last swap."""

    version: str
    previous: str | None = None
    swapped_at: str = ""


def read_live(settings: Settings) -> Live | None:
    """The version recorded by the last swap, or None (no swap yet, or an unreadable record)."""
    try:
        data = json.loads((settings.home / LIVE_FILE).read_text())
        return Live(str(data["version"]), data.get("previous"), str(data.get("swapped_at", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # readers see the old record or the new one, never half of one


def record_live(settings: Settings, version: str, previous: str | None, swapped_at: str) -> None:
    """Record ``version`` as live (called right after the views were repointed at it)."""
    _write_atomically(settings.home / LIVE_FILE,
                      {"version": version, "previous": previous, "swapped_at": swapped_at})


def known_versions(settings: Settings) -> set[str]:
    """Versions this ``KAPPA_HOME`` knows of: replayed ones and the live/previous ones."""
    names = {p.stem for p in (settings.home / "versions").glob("*.json")}
    live = read_live(settings)
    if live is not None:
        names |= {live.version} | ({live.previous} if live.previous else set())
    return names


def _norm(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)  # as in database names (sinks.migrate.database)


def next_free(version: str, taken: Iterable[str]) -> str:
    """The next unused name in ``version``'s series: same stem, number one past the highest taken.

    ``taken`` may hold database-style names (``-`` as ``_``).

    >>> next_free("v1", ["v1"])
    'v2'
    >>> next_free("run-7", ["run_7", "run_9", "v3"])
    'run-10'
    >>> next_free("live", ["live"])
    'live2'
    """
    m = re.fullmatch(r"(.*?)(\d+)", version)
    stem = m.group(1) if m else version
    highest = int(m.group(2)) if m else 1
    pattern = re.compile(re.escape(_norm(stem)) + r"(\d+)")
    for name in taken:
        hit = pattern.fullmatch(_norm(name))
        if hit:
            highest = max(highest, int(hit.group(1)))
    return f"{stem}{highest + 1}"


def _recorded_knobs(settings: Settings, version: str) -> dict[str, Any] | None:
    try:
        data = json.loads((settings.home / "versions" / f"{version}.json").read_text())
        knobs: dict[str, Any] = data["settings"]
        return knobs
    except (OSError, ValueError, KeyError, TypeError):
        return None


def choose_run_version(settings: Settings, explicit: str | None = None, force: bool = False,
                       echo: Callable[[str], None] = print) -> str:
    """The version ``kappa run`` runs: the live one unless another is asked for explicitly.

    ``explicit`` is ``--version``; ``KAPPA_VERSION`` counts as explicit when set. Before any
    swap the default is ``settings.version`` (``v1``). An explicit version other than the live
    one is refused (:class:`VersionNotServing`) unless ``force``, and then loudly warned about.
    """
    env_set = "version" in settings.model_fields_set
    requested, source = (explicit, "--version") if explicit else (
        (settings.version, "KAPPA_VERSION") if env_set else (None, ""))
    live = read_live(settings)
    if live is None:
        return requested or settings.version
    if requested is None or requested == live.version:
        _warn_knobs(settings, live.version, echo)
        return live.version
    if not force:
        raise VersionNotServing(
            f"{source} {requested} is not the serving version: the views read {live.version} "
            f"(swapped{' at ' + live.swapped_at if live.swapped_at else ''}); run `kappa run` without "
            f"--version{' and without KAPPA_VERSION' if env_set else ''} to keep them fresh, or add "
            f"--force to update {requested} anyway (the views keep reading {live.version})")
    echo(f"! running {requested} although the views serve {live.version} (--force): new events land "
         f"in {requested}'s tables only, and the serving views do not show them")
    return requested


def _warn_knobs(settings: Settings, version: str, echo: Callable[[str], None]) -> None:
    """Warn when the live version was built with other transformation knobs than this run's."""
    knobs = _recorded_knobs(settings, version)
    if knobs is None:
        return
    for name, built in sorted(knobs.items()):
        now = settings.knob(name)
        if now != built:
            echo(f"! {version} was built with KAPPA_{name.upper()}={built!r} but this run has {now!r}: "
                 f"new events would be transformed differently from the rest of {version}")
