"""The one settings object of an exnet process, read from ``EXNET_*`` variables.

It is resolved once, in the CLI, and passed down; nothing below the CLI reads
``os.environ``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.errors import ConfigError
from contracts.registry import DEMO_REGISTRY

__all__ = ["Settings", "load_settings"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]{0,100}$")


class Settings(BaseSettings):
    """Every knob of exnet; each field is the variable ``EXNET_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="EXNET_", frozen=True, extra="ignore")

    # --- Kafka -----------------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    partitions: Annotated[int, Field(ge=1, le=1000)] = 6
    #: Replicas of each topic ``exnet init`` creates; None: the cluster's brokers, up
    #: to 3 (``min.insync.replicas`` is then 2 where there are 2 or more).
    replication_factor: Annotated[int, Field(ge=1, le=10)] | None = None
    consumer_group: str = "exnet"

    # --- data ------------------------------------------------------------
    #: Network registry (SPEC §3). None: the demo registry; the publisher then
    #: skips the registry check (it checks only a registry the site names).
    registry: Path | None = None
    #: Local state: Kafka data, publisher spool, embedded ClickHouse.
    var_dir: Path = Path("var")

    # --- ClickHouse --------------------------------------------------------
    #: ``chdb:///path`` (embedded) or ``http(s)://user:pass@host:port``.
    #: None: embedded chDB under ``<var_dir>/chdb``.
    clickhouse_url: SecretStr | None = None
    clickhouse_database: str = "exnet"

    # --- operations --------------------------------------------------------
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9108
    #: Address the metrics endpoint binds; 0.0.0.0 lets a Prometheus elsewhere scrape it.
    metrics_host: str = "127.0.0.1"
    #: Loopback port where the process that owns the embedded database answers
    #: ``exnet sql`` (0: pick a free one; the port is written under var_dir).
    sql_port: Annotated[int, Field(ge=0, le=65535)] = 0
    log_level: str = "INFO"

    # --- stream workers ----------------------------------------------------
    #: Records a stream worker fetches at most at once (over all its partitions); each
    #: partition's share reaches its agent as one batch.
    stream_batch_max: Annotated[int, Field(ge=1, le=100_000)] = 10_000
    #: Stop a worker whose share of rejected messages over the last
    #: ``dlq_window`` messages exceeds this ratio, when the rejections are
    #: spread over most sites (a misconfigured deployment must not pour every
    #: event into the dead-letter topic; one site's bad data must not stop the
    #: others: ``streams.guard``). 1.0 disables it.
    dlq_max_ratio: Annotated[float, Field(gt=0, le=1)] = 0.9
    dlq_window: Annotated[int, Field(ge=10)] = 2_000

    # --- sink --------------------------------------------------------------
    sink_batch_rows: Annotated[int, Field(ge=1, le=1_000_000)] = 20_000
    sink_batch_seconds: Annotated[float, Field(gt=0, le=60)] = 0.5

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not _TOPIC_PREFIX.fullmatch(value):  # `$` alone would take a final newline
            raise ValueError("may hold only letters, digits, '.', '_' and '-'")
        return value

    @field_validator("clickhouse_database", "consumer_group")
    @classmethod
    def _check_identifier(cls, value: str) -> str:
        if not _IDENTIFIER.fullmatch(value):  # `$` alone would take a final newline
            raise ValueError("must be a plain identifier (letters, digits, '_')")
        return value

    @property
    def registry_path(self) -> Path:
        """The registry the stream workers check against."""
        return self.registry if self.registry is not None else DEMO_REGISTRY

    @property
    def clickhouse_dsn(self) -> str:
        """The ClickHouse connection string, secret included."""
        if self.clickhouse_url is not None:
            return self.clickhouse_url.get_secret_value()
        return f"chdb://{(self.var_dir / 'chdb').resolve()}"

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_dsn.startswith("chdb:")

    def as_dict(self) -> dict[str, Any]:
        """Every setting, secrets redacted: safe to log or print."""
        return self.model_dump(mode="json")


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment; a bad value is a :class:`ConfigError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"EXNET_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"bad setting: {problems}") from None
