"""`exnet` sub-commands: contracts (what sites and operators receive)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    contracts_app = typer.Typer(
        name="contracts",
        help="The event contracts: JSON Schemas and the topic registry, for sites and operators.",
        no_args_is_help=True,
    )

    @contracts_app.command("export")
    def export_command(
        directory: Annotated[
            Path,
            typer.Argument(
                help="Directory to write into (created if missing; earlier exports are "
                "overwritten).",
                file_okay=False,
            ),
        ],
    ) -> None:
        """Write <type>_v<major>.schema.json for every event version, and topics.json."""
        from contracts.export import export_contracts
        from exnet.settings import load_settings

        settings = load_settings()
        written = export_contracts(
            directory,
            topic_prefix=settings.topic_prefix,
            partitions=settings.partitions,
            replication_factor=settings.replication_factor,
        )
        out = Console(highlight=False, soft_wrap=True)
        for path in written:
            out.print(str(path))

    app.add_typer(contracts_app)
