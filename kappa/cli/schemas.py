"""``kappa schemas register`` / ``kappa schemas check``: the working tree's schemas vs the registry."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import requests

from kappa.errors import RegistryUnavailable
from kappa.settings import Settings, get_settings

__all__ = ["schemas"]


def _settings(topic_prefix: str | None) -> Settings:
    base = get_settings()
    return base if topic_prefix is None else base.model_copy(update={"topic_prefix": topic_prefix})


def _plan(settings: Settings, version: str | None) -> dict[str, str]:
    from schemas.catalog import topic_schemas

    return topic_schemas(version or settings.version, settings.topic_prefix)


def _url(settings: Settings) -> str:
    from kappa.stack.manager import endpoints

    return endpoints(settings).schema_registry_url.rstrip("/")


@click.group()
def schemas() -> None:
    """Avro schemas of every topic (the pipeline's schemas directory) in the schema registry."""


@schemas.command()
@click.option("--version", "version", default=None, help="Pipeline version of the output topics.")
@click.option("--topic-prefix", default=None, help="Input topic prefix (default KAPPA_TOPIC_PREFIX).")
def register(version: str | None, topic_prefix: str | None) -> None:
    """Register every schema under its topics' subjects (<topic>-value), compatibility BACKWARD."""
    from schemas.serde import Registry, schema_text, subject

    settings = _settings(topic_prefix)
    url = _url(settings)
    registry = Registry(url)
    for topic, name in _plan(settings, version).items():
        subj = subject(topic)
        try:
            registry.client.set_compatibility(subj, "BACKWARD")
        except Exception as exc:  # a registry without per-subject config still registers
            click.echo(f"warning: could not set BACKWARD on {subj}: {exc}", err=True)
        schema_id = registry.register(subj, schema_text(name))
        click.echo(f"{subj:<45} {name:<16} id {schema_id}")


def _compatibility(url: str, subj: str, text: str) -> tuple[bool | None, list[str], dict[str, Any] | None]:
    """(registry verdict or None when the subject is new, its messages, latest schema JSON)."""
    try:
        latest = requests.get(f"{url}/subjects/{subj}/versions/latest", timeout=10)
        if latest.status_code == 404:
            return None, [], None
        latest.raise_for_status()
        old = json.loads(latest.json()["schema"])
        resp = requests.post(f"{url}/compatibility/subjects/{subj}/versions/latest",
                             params={"verbose": "true"}, json={"schema": text, "schemaType": "AVRO"},
                             headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
                             timeout=10)
    except requests.RequestException as exc:
        raise RegistryUnavailable(f"schema registry at {url} does not answer: {exc}") from exc
    if resp.status_code >= 400:
        return False, [f"registry: {resp.text[:300]}"], old
    body = resp.json()
    return bool(body.get("is_compatible")), list(body.get("messages") or []), old


@schemas.command()
@click.option("--version", "version", default=None, help="Pipeline version of the output topics.")
@click.option("--topic-prefix", default=None, help="Input topic prefix (default KAPPA_TOPIC_PREFIX).")
@click.option("--schema-dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Candidate .avsc files (default: the pipeline's schemas directory).")
def check(version: str | None, topic_prefix: str | None, schema_dir: str | None) -> None:
    """Test each candidate schema against the latest registered version (BACKWARD).

    Exits 1 naming every incompatible field, so CI can gate schema changes on it.
    """
    from schemas.compat import backward_incompatibilities
    from schemas.serde import schema_path, subject

    settings = _settings(topic_prefix)
    url = _url(settings)
    folder = Path(schema_dir) if schema_dir else None
    failures = 0
    for topic, name in _plan(settings, version).items():
        subj = subject(topic)
        path = folder / f"{name}.avsc" if folder else schema_path(name)
        if not path.exists():
            click.echo(f"{subj:<45} {name:<16} skipped (no {path.name} in {folder})")
            continue
        text = path.read_text()
        verdict, messages, old = _compatibility(url, subj, text)
        if verdict is None:
            click.echo(f"{subj:<45} {name:<16} new subject (nothing registered yet)")
            continue
        problems = backward_incompatibilities(json.loads(text), old) if isinstance(old, dict) else []
        if verdict and not problems:
            click.echo(f"{subj:<45} {name:<16} compatible")
            continue
        failures += 1
        click.secho(f"{subj:<45} {name:<16} INCOMPATIBLE", fg="red")
        for line in problems or messages or ["registry refused it without a reason"]:
            click.echo(f"    {path}: {line}")
        if problems and messages:
            click.echo(f"    registry: {'; '.join(str(m) for m in messages)[:300]}")
    if failures:
        click.secho(f"{failures} schema(s) are not backward compatible with the registry", fg="red",
                    err=True)
        sys.exit(1)
