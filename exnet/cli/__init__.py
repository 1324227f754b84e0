"""The ``exnet`` command: one sub-command per job (options -> settings -> build -> run).

Each job lives in a module of its own that exposes ``register(app)``; this
module only assembles them and turns expected failures into a clear message.

``pip install exnet`` is the sites' side: ``publish``, ``spool``, ``simulate``
and ``contracts export`` import nothing of the ``platform`` extra (pyproject),
the other commands do, when they run. Without the extra such a command says
which extra to install and exits 2 (:func:`main`); ``exnet --help`` lists every
command.
"""

from __future__ import annotations

import logging
import sys
from typing import Final

import typer
from rich.console import Console
from typer._click.exceptions import ClickException as _ClickException  # typer's own click
from typer.core import TyperGroup

from contracts.errors import RecoverableError, UserError
from exnet.logs import drop_close_races
from exnet.settings import CLICKHOUSE_CLIENT_LOGGERS, LOG_FORMAT

__all__ = ["PLATFORM_INSTALL", "PLATFORM_MODULES", "app", "main"]

#: How to install what the platform's commands need.
PLATFORM_INSTALL: Final = 'pip install "exnet[platform]"'
#: Import names of the ``platform`` extra's distributions (pyproject), and of
#: ``mode`` (faust-streaming's, imported by ``streams``): a command that cannot
#: import one of them needs the extra.
PLATFORM_MODULES: Final = frozenset(
    {"faust", "mode", "aiokafka", "clickhouse_connect", "chdb", "prometheus_client", "tenacity"}
)
#: Exit status of a usage error (as a UserError's).
_EXIT_USAGE: Final = 2

app = typer.Typer(
    name="exnet",
    help="exnet: sites' events -> Kafka -> validation -> ClickHouse analytics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_all() -> None:
    # Imported here, not at module import, so that `exnet --help` stays fast
    # and no job's dependencies load for another job. Each command module
    # imports the platform extra inside its commands, never as it loads.
    from exnet.cli import broker, contracts, ops, pipeline, publish, simulate

    for module in (broker, contracts, pipeline, publish, simulate, ops):
        module.register(app)


def _needs_platform(exc: ModuleNotFoundError) -> bool:
    """Whether ``exc`` is about a module that only the platform extra installs."""
    return exc.name is not None and exc.name.split(".", 1)[0] in PLATFORM_MODULES


def _command_path(args: list[str]) -> str:
    """``exnet`` and the (sub-)command that ``args`` name, e.g. ``exnet broker start``."""
    words = ["exnet"]
    group: object = typer.main.get_command(app)
    for arg in args:
        if arg.startswith("-"):
            continue
        if not isinstance(group, TyperGroup) or arg not in group.commands:
            break
        words.append(arg)
        group = group.commands[arg]
    return " ".join(words)


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(
        level=logging.WARNING,
        format=LOG_FORMAT,
    )
    # kafka-python's lines for a socket or request its own close() cut short (an ERROR
    # and a traceback from a command that worked, such as `exnet rejects --original`).
    drop_close_races()
    # A command's own error says what a failed ClickHouse request was; the HTTP
    # client's retry and driver warnings before it only said it twice more. (`exnet
    # up` sets its loggers' levels again: exnet.runner.configure_logging.)
    for library in CLICKHOUSE_CLIENT_LOGGERS:
        logging.getLogger(library).setLevel(logging.ERROR)
    try:
        _register_all()
        # Without standalone mode click returns (not raises) a command's exit code.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except UserError as exc:
        _error(str(exc))
        sys.exit(_EXIT_USAGE)
    except RecoverableError as exc:  # a transient failure its command did not outlast
        _error(str(exc))
        sys.exit(1)
    except ModuleNotFoundError as exc:
        if not _needs_platform(exc):
            raise
        _error(
            f"`{_command_path(sys.argv[1:])}` needs the platform extra: {PLATFORM_INSTALL} "
            f"(no module named {exc.name!r})"
        )
        sys.exit(_EXIT_USAGE)
    except typer.Abort:
        Console(stderr=True).print("aborted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except _ClickException as exc:  # usage errors: bad option values, unknown commands
        exc.show()
        sys.exit(exc.exit_code)


def _error(text: str) -> None:
    Console(stderr=True, soft_wrap=True).print(
        f"[bold red]error:[/] {_plain(text)}", highlight=False
    )


def _plain(text: str) -> str:
    """Our message, shown as is (no rich markup in it)."""
    from rich.markup import escape

    return escape(text)
