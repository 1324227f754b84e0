"""Helpers of the ops-tools tests: run the commands of ``exnet.cli.ops`` with given settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner, Result

from exnet.cli import ops
from exnet.settings import Settings

EXNET = Path(sys.executable).with_name("exnet")


def ops_env(settings: Settings, **extra: str) -> dict[str, str]:
    """``EXNET_*`` variables that make ``load_settings()`` return ``settings``."""
    env = {
        "EXNET_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "EXNET_TOPIC_PREFIX": settings.topic_prefix,
        "EXNET_VAR_DIR": str(settings.var_dir),
        "EXNET_PARTITIONS": str(settings.partitions),
        "EXNET_METRICS_PORT": "0",
        "COLUMNS": "160",
    }
    if settings.registry is not None:
        env["EXNET_REGISTRY"] = str(settings.registry)
    if settings.clickhouse_url is not None:
        env["EXNET_CLICKHOUSE_URL"] = settings.clickhouse_url.get_secret_value()
    env.update(extra)
    return env


def ops_cli(settings: Settings, *args: str, **extra_env: str) -> Result:
    """Run ``exnet <args>`` in-process on an app holding only this module's commands."""
    app = typer.Typer(add_completion=False)
    ops.register(app)

    @app.callback()
    def _root() -> None:  # a callback keeps sub-command names on a one-module app
        pass

    return CliRunner().invoke(app, list(args), env=ops_env(settings, **extra_env))


def exnet_subprocess(
    settings: Settings, *args: str, cwd: Path, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run the real ``exnet`` console script with ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXNET_")}
    env.update(ops_env(settings))
    return subprocess.run(
        [str(EXNET), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
