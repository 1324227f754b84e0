"""`exnet` sub-commands: broker (the local Apache Kafka broker; see :mod:`exnet.broker`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from exnet import broker

__all__ = ["STATUS_STOPPED_EXIT", "register"]

#: Exit status of ``exnet broker status`` when the broker is not running (as LSB
#: init scripts do); 0 when it is.
STATUS_STOPPED_EXIT = 3


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    broker_app = typer.Typer(
        name="broker",
        help="The local Apache Kafka broker (KRaft, one node on 127.0.0.1, data under var/kafka).",
        no_args_is_help=True,
    )

    @broker_app.command("start")
    def start_command(
        timeout: Annotated[
            float, typer.Option(help="Seconds to wait for the broker to answer.", min=1)
        ] = broker.START_TIMEOUT_S,
    ) -> None:
        """Start the broker (fetching its jars on first use); return once it answers."""
        config = _config()
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        result = broker.start(config, timeout_s=timeout, on_step=err.print)
        out = Console(highlight=False, soft_wrap=True)
        if result.already_running:
            out.print(
                f"Kafka broker already running (pid {result.pid}) on {config.bootstrap}; "
                "nothing to do"
            )
        else:
            out.print(
                f"Kafka broker started (pid {result.pid}) on {config.bootstrap} "
                f"in {result.seconds:.1f} s; logs in {config.logs_dir}"
            )

    @broker_app.command("stop")
    def stop_command(
        timeout: Annotated[
            float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.", min=0)
        ] = broker.STOP_TIMEOUT_S,
    ) -> None:
        """Stop the broker cleanly (SIGTERM; SIGKILL if it does not exit in time)."""
        config = _config()
        result = broker.stop(config, timeout_s=timeout)
        out = Console(highlight=False, soft_wrap=True)
        if result.pid is None:
            stale = f" (removed stale pid file of {result.stale_pid})" if result.stale_pid else ""
            out.print(f"Kafka broker not running{stale}; nothing to do")
        elif result.killed:
            out.print(f"Kafka broker (pid {result.pid}) did not stop in {timeout:g} s; killed it")
        else:
            out.print(f"Kafka broker (pid {result.pid}) stopped")

    @broker_app.command("status")
    def status_command() -> None:
        """Print whether the broker runs; exit 0 when running, 3 when stopped."""
        config = _config()
        found = broker.status(config)
        out = Console(highlight=False, soft_wrap=True)
        if found.running:
            answering = "answering" if found.answering else "not answering yet"
            out.print(f"running  pid {found.pid}  bootstrap {found.bootstrap}  ({answering})")
            return
        stale = f"  (stale pid file names {found.stale_pid})" if found.stale_pid else ""
        out.print(f"stopped  bootstrap {found.bootstrap}{stale}")
        # SystemExit, not typer.Exit: in non-standalone mode click returns the
        # code of a typer.Exit instead of exiting with it.
        raise SystemExit(STATUS_STOPPED_EXIT)

    app.add_typer(broker_app, name="broker")


def _config() -> broker.BrokerConfig:
    from exnet.settings import load_settings  # here: pydantic takes ~0.2 s to import

    return broker.BrokerConfig.from_settings(load_settings())
