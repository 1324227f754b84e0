"""The ``exnet`` command: one sub-command per job (options -> settings -> build -> run).

Each job lives in a module of its own that exposes ``register(app)``; this
module only assembles them and turns expected failures into a clear message.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console
from typer._click.exceptions import ClickException as _ClickException  # typer's own click

from contracts.errors import UserError

__all__ = ["app", "main"]

app = typer.Typer(
    name="exnet",
    help="exnet: sites' events -> Kafka -> validation -> ClickHouse analytics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_all() -> None:
    # Imported here, not at module import, so that `exnet --help` stays fast
    # and no job's dependencies load for another job.
    from exnet.cli import broker, contracts, ops, pipeline, publish, simulate

    for module in (broker, contracts, pipeline, publish, simulate, ops):
        module.register(app)


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _register_all()
    try:
        # Without standalone mode click returns (not raises) a command's exit code.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except UserError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {_plain(str(exc))}", highlight=False)
        sys.exit(2)
    except typer.Abort:
        Console(stderr=True).print("aborted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except _ClickException as exc:  # usage errors: bad option values, unknown commands
        exc.show()
        sys.exit(exc.exit_code)


def _plain(text: str) -> str:
    """Our message, shown as is (no rich markup in it)."""
    from rich.markup import escape

    return escape(text)
