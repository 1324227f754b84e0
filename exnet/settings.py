"""The one settings object of an exnet process, read from ``EXNET_*`` variables.

It is resolved once, in the CLI, and passed down; nothing below the CLI reads
``os.environ``. The Kafka password is a ``SecretStr``: it is never logged or printed.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.errors import ConfigError
from contracts.registry import DEMO_REGISTRY

#: Every exnet process logs lines of this form (to stderr).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The ClickHouse client's loggers: clickhouse-connect's, and urllib3's pool beneath it
#: (clickhouse-connect sets the "urllib3" logger's own level as it is imported). The
#: CLI's one-shot commands quiet them (their own error says what failed); `exnet up`
#: lets them log.
CLICKHOUSE_CLIENT_LOGGERS = ("clickhouse_connect", "urllib3.connectionpool")

#: Seconds between an exnet HTTP server thread's checks for a stop (the operations
#: endpoint's, the embedded database's SQL endpoint's): `socketserver`'s default, 0.5,
#: made every stop of `exnet up` wait up to that long, twice (each process has one).
SHUTDOWN_POLL_S = 0.05

#: Every exnet consumer's fetch (the stream workers' and the sink's): the broker holds
#: it until FETCH_MIN_BYTES are new, FETCH_MAX_WAIT_MS at most. The clients' defaults
#: (Faust's fixed 1.5 s wait, kafka-python's 500 ms: most of the latency budget; one
#: byte) made the consumers fetch continuously at moderate rates, a record or two per
#: partition a time, each paying a batch's costs. Measured at a steady 100-300
#: events/s, the whole pipeline (worker, writer, broker) took 1.25-1.54 cores with one
#: byte, 0.60-0.77 with 64 KiB, its p99 latency 0.45-0.54 s against 0.56-0.60 s. From
#: about 1,000 events/s the worker is busy enough that its fetches gather records
#: anyway: the two were within the run-to-run spread there (docs/performance.md).
FETCH_MAX_WAIT_MS = 50
FETCH_MIN_BYTES = 64 * 1024
#: The longest a kafka-python client waits between attempts to reach a broker that
#: refused its connections. The client's default grows to 30 s: after a broker's
#: restart the sink wrote nothing for about 30 s in most of an outside tester's runs
#: (31 s in one of two of ours; 3.9 s in two after), while the stream worker (aiokafka)
#: resumed within 2 s.
RECONNECT_BACKOFF_MAX_MS = 1000

__all__ = [
    "CLICKHOUSE_CLIENT_LOGGERS",
    "FETCH_MAX_WAIT_MS",
    "FETCH_MIN_BYTES",
    "LOG_FORMAT",
    "SHUTDOWN_POLL_S",
    "KafkaRefusals",
    "Settings",
    "load_settings",
    "silent_broker_hint",
]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]{0,100}$")
#: A broker's address: a host name, an IPv4 address or a bracketed IPv6 one, and a port.
_BOOTSTRAP_SERVER = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}$")


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
    #: How every Kafka client connects (SPEC §5): ``PLAINTEXT`` (the local
    #: development broker) or ``SASL_SSL`` (TLS, a SCRAM login as ``kafka_username``).
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_username: str | None = None
    kafka_password: SecretStr | None = None
    #: The CA certificate (PEM) that signed the brokers' certificates; None: the system's.
    kafka_ca_file: Path | None = None

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
    #: Python's level names, in any case (``debug`` is DEBUG).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    # --- stream workers ----------------------------------------------------
    #: Records a stream worker fetches at most at once (over all its partitions); each
    #: topic's share reaches its agent as one message, a batch per partition.
    stream_batch_max: Annotated[int, Field(ge=1, le=100_000)] = 10_000
    #: Stop a worker whose share of rejected messages over the last
    #: ``dlq_window`` messages exceeds this ratio, when the rejections are
    #: spread over most sites (a misconfigured deployment must not pour every
    #: event into the dead-letter topic; one site's bad data must not stop the
    #: others: ``streams.guard``). 1.0 disables it.
    dlq_max_ratio: Annotated[float, Field(gt=0, le=1)] = 0.9
    dlq_window: Annotated[int, Field(ge=10)] = 2_000

    # --- sink --------------------------------------------------------------
    #: Rows a batch holds at most (a backlog's batches are full). Its insert's peak memory
    #: grows with it: 200,000 session rows into chDB, in one process, peaked 68 MiB
    #: above the start with 20,000 rows an insert, 35 with 10,000 and 28 with 5,000, at
    #: 5.7, 6.0 and 7.2 µs a row (2026-12-04); the writer's decoded records halve too.
    sink_batch_rows: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    #: The oldest row of a batch waits at most this long for the write: a quarter of
    #: the 1 s publish-to-queryable budget (an insert a quarter second is cheap for
    #: ClickHouse; a server under many writers may want a longer one).
    sink_batch_seconds: Annotated[float, Field(gt=0, le=60)] = 0.25
    #: Seconds between the sink's comparisons of the stream-written views with their
    #: reference computed from the facts (``exnet_view_rows_differing``); 0 disables
    #: them. Each recomputes every view from the facts: on a large network, a longer one.
    verify_interval_s: Annotated[float, Field(ge=0, le=86_400)] = 60.0

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not _TOPIC_PREFIX.fullmatch(value):  # `$` alone would take a final newline
            raise ValueError("may hold only letters, digits, '.', '_' and '-'")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        # logging takes only upper-case names: "debug" passed here, then stopped the
        # process as logging was set up.
        return value.upper() if isinstance(value, str) else value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        # Anything else was taken for a broker that does not answer: "Kafka is
        # unreachable", and a site's events spooled, for a typing mistake.
        servers = [server.strip() for server in value.split(",")]
        if not all(_BOOTSTRAP_SERVER.fullmatch(server) for server in servers):
            raise ValueError("must be host:port, or several separated by commas")
        if not all(0 < int(server.rpartition(":")[2]) < 65_536 for server in servers):
            raise ValueError("has a port outside 1-65535")
        return value

    @field_validator("clickhouse_url")
    @classmethod
    def _check_clickhouse_url(cls, value: SecretStr | None) -> SecretStr | None:
        # Anything else was tried over HTTP on port 8123 (an ftp:// URL included).
        if value is not None:
            url = value.get_secret_value()
            scheme = url.partition("://")[0].lower()
            if scheme not in ("chdb", "http", "https"):
                raise ValueError("must be chdb:///path, or http(s)://user:password@host:port")
            if scheme != "chdb" and not _readable_server_url(url):
                # A password holding "/" was taken for the end of the host, its start for
                # the port: a traceback printed it ("Port could not be cast to integer
                # value as 'Zm9v'"). Not repeated here: the message names no part of it.
                raise ValueError(
                    "cannot be read as http(s)://user:password@host:port: write a '/', "
                    "'?', '#' or '@' in the user or password percent-encoded (%2F, %3F, "
                    "%23, %40)"
                )
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

    @property
    def refused_login(self) -> str:
        """The words every message about a refused Kafka login starts with."""
        return f"Kafka refused the login of {self.kafka_username!r} ({self.kafka_sasl_mechanism})"

    def kafka_ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of a ``SASL_SSL`` connection (None for ``PLAINTEXT``): the
        brokers' certificates checked against ``kafka_ca_file``, hostnames too."""
        if self.kafka_security_protocol == "PLAINTEXT":
            return None
        cafile = str(self.kafka_ca_file) if self.kafka_ca_file is not None else None
        try:
            return ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"EXNET_KAFKA_CA_FILE: cannot read {cafile}: {exc}") from None

    def kafka_client_config(self) -> dict[str, Any]:
        """The connection settings of a kafka-python client (producer, consumer, admin):
        bootstrap servers and, for ``SASL_SSL``, the login and the TLS context.

        Raises :class:`ConfigError` when ``SASL_SSL`` lacks a username or password.
        """
        config: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.kafka_bootstrap.split(",") if s.strip()],
            "security_protocol": self.kafka_security_protocol,
            "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
        }
        if self.kafka_security_protocol == "PLAINTEXT":
            return config
        if self.kafka_username is None or self.kafka_password is None:
            raise ConfigError(
                "EXNET_KAFKA_SECURITY_PROTOCOL is SASL_SSL: set EXNET_KAFKA_USERNAME and "
                "EXNET_KAFKA_PASSWORD (a site's env file from the operator has them)"
            )
        return config | {
            "sasl_mechanism": self.kafka_sasl_mechanism,
            "sasl_plain_username": self.kafka_username,
            "sasl_plain_password": self.kafka_password.get_secret_value(),
            "ssl_context": self.kafka_ssl_context(),
        }

    @property
    def secrets(self) -> list[str]:
        """The passwords these settings hold (Kafka's, the ClickHouse URL's), to keep out
        of every log line (:func:`exnet.logs.hide_secrets`)."""
        held = [self.kafka_password.get_secret_value()] if self.kafka_password else []
        if self.clickhouse_url is not None:
            # As written and as the login uses it (sinks.client.server_login).
            password = urlsplit(self.clickhouse_url.get_secret_value()).password or ""
            held += [password, unquote(password)]
        return [secret for secret in held if secret]

    def as_dict(self) -> dict[str, Any]:
        """Every setting, secrets redacted: safe to log or print."""
        return self.model_dump(mode="json")


class KafkaRefusals(logging.Handler):
    """Collects why Kafka refused a connection, from kafka-python's own log records.

    kafka-python reports a failed login or TLS handshake only in its log and then
    gives up with "Unable to bootstrap", as if no broker were there. Attached to
    the ``kafka`` logger around a connection attempt (``with KafkaRefusals(settings)
    as refusals:``), :meth:`reason` turns what it saw into one line for people,
    or None when nothing was refused. No secret is in those records.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(level=logging.DEBUG)
        self._settings = settings
        self._seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self._seen.append(record.getMessage())

    def __enter__(self) -> KafkaRefusals:
        # kafka-python's records go here alone meanwhile (the CLI may have silenced them).
        kafka = logging.getLogger("kafka")
        self._saved = (kafka.level, kafka.propagate)
        kafka.setLevel(logging.WARNING)
        kafka.propagate = False
        kafka.addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        kafka = logging.getLogger("kafka")
        kafka.removeHandler(self)
        kafka.setLevel(self._saved[0])
        kafka.propagate = self._saved[1]

    def reason(self) -> str | None:
        """What Kafka refused, in one line, or None."""
        seen = " ".join(self._seen)
        who = self._settings.kafka_username
        if "SaslAuthenticationFailed" in seen or "Authentication failed" in seen:
            return (
                f"{self._settings.refused_login}: "
                "wrong username or password (EXNET_KAFKA_USERNAME, EXNET_KAFKA_PASSWORD)"
            )
        if "CERTIFICATE_VERIFY_FAILED" in seen or "certificate verify failed" in seen:
            detail = re.search(r"certificate verify failed: ([^(\])]+)", seen)
            why = detail.group(1).strip() if detail else "not trusted"
            return (
                f"the brokers' TLS certificate is refused ({why}): it is not signed by the CA "
                f"in EXNET_KAFKA_CA_FILE ({self._settings.kafka_ca_file}), or has expired"
            )
        if "TopicAuthorizationFailed" in seen or "ClusterAuthorizationFailed" in seen:
            return f"Kafka does not allow {who!r} this operation (its ACLs)"
        if (
            self._settings.kafka_security_protocol == "SASL_SSL"
            and "SSLTransport" in seen
            and "disconnected" in seen
        ):
            # The TLS handshake passed, then the broker hung up before the login's answer
            # arrived (it closes a failed login's connection at once): still a refused login.
            return (
                f"{self._settings.refused_login}: "
                "it closed the connection during the login, which it does for a wrong "
                "username or password (EXNET_KAFKA_USERNAME, EXNET_KAFKA_PASSWORD)"
            )
        return None


def silent_broker_hint(settings: Settings) -> str:
    """What to try when no broker answers a plaintext client (a broker listening for
    TLS and a login stays silent to it); empty when the client already logs in."""
    if settings.kafka_security_protocol != "PLAINTEXT":
        return ""
    return (
        "a broker whose listener needs TLS and a login does not answer plaintext: "
        "point EXNET_ENV_FILE at your login's env file"
    )


def _readable_server_url(url: str) -> bool:
    """Whether ``url`` splits into a host, an optional port and login, and a path that
    holds no ``@`` (else a password's ``/``, ``?`` or ``#`` cut the login short)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError when what stands there is no number
    except ValueError:
        return False
    return bool(parts.hostname) and "@" not in parts.path + parts.query + parts.fragment


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment; a bad value is a :class:`ConfigError`.

    ``EXNET_ENV_FILE`` names a file of ``EXNET_*=value`` lines (such as a site's
    ``var/kafka/secrets/site-<SITE_ID>.env``) read beneath the environment's own.
    """
    env_file = os.environ.get("EXNET_ENV_FILE")
    if env_file and not Path(env_file).is_file():
        raise ConfigError(f"EXNET_ENV_FILE: {env_file} is not a readable file")
    try:
        return Settings(_env_file=env_file or None, **overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"EXNET_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"bad setting: {problems}") from None
