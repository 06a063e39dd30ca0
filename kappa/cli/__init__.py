"""The ``kappa`` command line: one module per command group, registered here."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from kappa.errors import KappaError

__all__ = ["cli", "main"]

# command name -> module under kappa.cli that defines a click command of the same name
_COMMANDS = {
    "up": "stack",
    "down": "stack",
    "status": "stack",
    "topics": "topics",
    "schemas": "schemas",
    "produce": "produce",
    "run": "run",
    "query": "query",
    "demo": "demo",
    "replay": "replay",
    "bench": "bench",
    "pipeline": "pipeline",
    "init": "pipeline",
}


def _select_pipeline(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``--pipeline DIR``: every command (and the processes it starts) runs that pipeline."""
    if value is None:
        return
    import os

    from kappa.pipeline import load

    path = os.path.abspath(os.path.expanduser(value))
    load(path)  # a bad definition stops here, naming file, entry and why
    os.environ["KAPPA_PIPELINE"] = path


def _pipeline_option() -> click.Option:
    return click.Option(["--pipeline"], metavar="DIR", expose_value=False, is_eager=True,
                        callback=_select_pipeline,
                        help="Pipeline project directory (default: KAPPA_PIPELINE, else examples/ecommerce).")


def _with_pipeline_option(cmd: click.Command) -> click.Command:
    if not any(p.name == "pipeline" for p in cmd.params):
        cmd.params.append(_pipeline_option())
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            _with_pipeline_option(sub)
    return cmd


class _LazyGroup(click.Group):
    """Imports a command's module only when it runs, so ``kappa status`` stays fast."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = _COMMANDS.get(cmd_name)
        if module is None:
            return None
        try:
            mod = importlib.import_module(f"kappa.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"kappa.cli.{module}":
                return None
            raise
        cmd = getattr(mod, cmd_name.replace("-", "_"), None)
        if not isinstance(cmd, click.Command):
            return None
        return cmd if cmd_name in ("up", "down", "init") else _with_pipeline_option(cmd)


@click.group(cls=_LazyGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
@click.option("--pipeline", metavar="DIR", expose_value=False, is_eager=True, callback=_select_pipeline,
              help="Pipeline project directory for every command (default: KAPPA_PIPELINE, else examples/ecommerce).")
def cli(verbose: bool) -> None:
    """Kappa: Kafka + Avro -> Faust -> River -> ClickHouse; batch is a replay of the log."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    """Console-script entry point: KappaError becomes a one-line message and exit code 1."""
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KappaError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)
    except OSError as exc:  # a file that is missing or unreadable, a path that cannot be created
        click.secho(f"error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}",
                    fg="red", err=True)
        sys.exit(1)
    except Exception as exc:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        click.secho(f"error: {type(exc).__name__}: {exc} (run `kappa -v ...` for the details)",
                    fg="red", err=True)
        sys.exit(1)
