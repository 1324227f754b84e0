"""exnet's launcher for a local Apache Kafka broker (``exnet broker start|stop|status``).

It runs real Apache Kafka, single node, KRaft combined mode (broker and
controller in one JVM), on loopback only, from jars that Maven fetches from
Maven Central as ``exnet/kafka/pom.xml`` (package data) pins them. CI and people start Kafka
the same way, through this module.

What callers may rely on:

- :func:`start` returns only once the broker answers a metadata request, and
  raises :class:`~contracts.errors.UserError` otherwise (missing ``java`` or
  ``mvn``, a port taken by another program, a broker that dies or stays silent;
  the message then carries the tail of the broker's log). Starting a running
  broker changes nothing.
- :func:`stop` returns once the process is gone (SIGTERM, then SIGKILL after a
  timeout) and its pid file removed. Stopping a stopped broker changes nothing.
- Everything of one broker lives under :attr:`BrokerConfig.home`
  (``<var_dir>/kafka`` for the configured one): ``data/`` (the log dirs and
  KRaft metadata; kept across restarts), ``logs/`` (``server.log``,
  ``controller.log``, ``console.log`` for the JVM's own output),
  ``server.properties`` (regenerated at every start) and ``broker.pid``.
  The jars live outside it, in ``~/.cache/exnet/kafka-jars/<hash of the pom>/``,
  shared by every broker and checkout of the user and fetched once.
- A pid file whose process is gone, or belongs to another program, is stale:
  :func:`status` reports the broker stopped and :func:`start` / :func:`stop`
  remove the file.
- Start and stop of one home are serialised by a lock file, so two
  ``exnet broker start`` at once start one broker.
- A home's broker is the one its pid file names, on the ports its
  ``server.properties`` binds. When it runs on other ports than the config asks
  for (``EXNET_KAFKA_BOOTSTRAP`` changed since it started), :func:`status` and
  :func:`start` raise a :class:`UserError` that names both addresses and what
  to set, rather than report (or wait for) whatever answers on the config's
  port; :func:`stop` stops it all the same, and logs a warning naming its port.
  A stopped broker starts on the config's ports (``server.properties`` is
  rewritten; its data is kept).

Only a broker on 127.0.0.1 is launched; ``EXNET_KAFKA_BOOTSTRAP`` lets the rest
of exnet use any other broker or cluster instead.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from contracts.errors import UserError
from exnet import broker_security

if TYPE_CHECKING:
    from exnet.settings import Settings

__all__ = [
    "DEFAULT_CONTROLLER_PORT",
    "Cluster",
    "DEFAULT_PORT",
    "HOST",
    "BrokerConfig",
    "BrokerStatus",
    "StartResult",
    "StopResult",
    "broker_answers",
    "cluster_status",
    "ensure_jars",
    "pinned_kafka_version",
    "port_open",
    "server_properties",
    "start",
    "start_cluster",
    "status",
    "stop",
    "stop_cluster",
]

#: Where the Maven project that pins the broker's jars, and its logging config, live:
#: package data, so that an installed wheel launches the same broker as a checkout.
KAFKA_RESOURCES = Path(__file__).resolve().parent / "kafka"
POM_FILE = KAFKA_RESOURCES / "pom.xml"
LOG4J_CONFIG = KAFKA_RESOURCES / "log4j2.properties"
#: Jar folders, one per pom content: a per-user cache (like Maven's own ``~/.m2``),
#: outside the checkout and the installed package, shared by every checkout.
JAR_CACHE = Path.home() / ".cache" / "exnet" / "kafka-jars"

#: The launcher binds loopback only: a development broker has no authentication.
HOST = "127.0.0.1"
DEFAULT_PORT = 9092
DEFAULT_CONTROLLER_PORT = 9093

#: JVM heap: enough for a development node's traffic, modest next to chDB and
#: Faust workers on a 2-core machine.
HEAP_OPTS = ("-Xms256m", "-Xmx512m")
#: Kafka's own scripts use G1 with short pauses; a broker that runs out of heap
#: should die (and show up in ``status``) rather than limp.
JVM_OPTS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
#: For ``StorageTool``, a JVM that lives seconds: skipping the optimising JIT and
#: G1's set-up starts it ~1.3 s (40 %) faster on 2 cores.
TOOL_JVM_OPTS = ("-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
#: Kafka 4.x brokers need Java 17 or newer.
MIN_JAVA_MAJOR = 17

#: Seconds to wait for a started broker to answer. A warm start on 2 cores takes
#: about 6 s; the margin covers a first start on a slow CI disk.
START_TIMEOUT_S = 90.0
#: Seconds to wait after SIGTERM before SIGKILL. A single node shuts down in ~2 s.
STOP_TIMEOUT_S = 30.0
#: Seconds to wait for the process to vanish after SIGKILL.
KILL_TIMEOUT_S = 10.0
#: Seconds for one readiness probe (TCP connect, then a metadata request that
#: takes ~0.1 s on loopback).
PROBE_TIMEOUT_S = 2.0
#: Seconds between readiness probes and liveness checks.
POLL_INTERVAL_S = 0.25
#: Seconds Maven may take for the first fetch (~45 MB of jars plus Maven's plugins).
MVN_TIMEOUT_S = 900.0
#: Seconds for ``StorageTool format`` (one JVM start, ~3 s).
FORMAT_TIMEOUT_S = 120.0
#: Lines of the broker's log shown when a start fails.
LOG_TAIL_LINES = 30

_KAFKA_MAIN = "kafka.Kafka"
_STORAGE_TOOL = "kafka.tools.StorageTool"
_JARS_COMPLETE = ".complete"
_INSTALL_JAVA = "install a Java 17+ JDK (apt-get install openjdk-17-jdk-headless)"
_INSTALL_MAVEN = "install Maven 3.8+ (apt-get install maven)"

OnStep = Callable[[str], None]


T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerConfig:
    """Where one local broker keeps its files and which loopback ports it binds."""

    home: Path
    port: int = DEFAULT_PORT
    controller_port: int = DEFAULT_CONTROLLER_PORT
    jar_cache: Path = JAR_CACHE
    #: KRaft node id; every node of a cluster has its own.
    node_id: int = 1
    #: The cluster's controller quorum, (node id, controller port) each; empty: this
    #: node alone.
    quorum: tuple[tuple[int, int], ...] = ()
    #: Replicas of Kafka's internal topics (the consumer offsets): the cluster's size, up to 3.
    replicas: int = 1
    #: The secrets of a SASL_SSL node (:mod:`exnet.broker_security`); None: plaintext.
    secrets: Path | None = None

    def connection(self) -> dict[str, Any] | None:
        """kafka-python settings for this launcher to log in (None: plaintext)."""
        if self.secrets is None:
            return None
        return broker_security.Secrets(self.secrets).connection(self.bootstrap)

    def __post_init__(self) -> None:
        for port in (self.port, self.controller_port):
            if not 0 < port < 65536:
                raise UserError(f"port {port} is out of range (1-65535)")
        if self.port == self.controller_port:
            raise UserError(f"the broker and its controller both want port {self.port}")

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def server_log(self) -> Path:
        return self.logs_dir / "server.log"

    @property
    def console_log(self) -> Path:
        """The JVM's stdout and stderr (crashes before logging starts land here)."""
        return self.logs_dir / "console.log"

    @property
    def properties_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def lock_file(self) -> Path:
        return self.home / ".launcher.lock"


@dataclass(frozen=True)
class BrokerStatus:
    """What :func:`status` found."""

    running: bool
    #: The broker's pid when running.
    pid: int | None
    bootstrap: str
    #: Whether it answered a metadata request (a running broker may still be starting).
    answering: bool
    #: A pid file whose process is gone or is not this broker.
    stale_pid: int | None
    home: Path
    #: Not running, yet something listens on its port: often a broker started from
    #: another ``EXNET_VAR_DIR``, which this one's status cannot see.
    port_taken: bool = False


@dataclass(frozen=True)
class StartResult:
    pid: int
    #: True when the broker was running already and nothing was started.
    already_running: bool
    #: Seconds from the call until the broker answered.
    seconds: float


@dataclass(frozen=True)
class StopResult:
    #: The stopped broker's pid; None when none was running.
    pid: int | None
    #: True when SIGTERM was not enough and the process was killed.
    killed: bool
    #: A stale pid file that was removed.
    stale_pid: int | None
    #: Where the stopped broker listened (its ``server.properties``; the config's
    #: address when that does not say); None when none was running.
    bootstrap: str | None = None


# --- public API ---------------------------------------------------------------


def start(
    config: BrokerConfig,
    *,
    timeout_s: float = START_TIMEOUT_S,
    on_step: OnStep | None = None,
) -> StartResult:
    """Start the broker detached and return once it answers a metadata request.

    A broker already running from ``config.home`` is left alone (it is waited
    for if it is still starting); one running there on other ports than
    ``config``'s raises a :class:`UserError` (:func:`status`). On the first
    start Maven fetches the jars and the storage is formatted with a new cluster
    id. A broker that exits or stays silent for ``timeout_s`` seconds is stopped
    and a :class:`UserError` carries the tail of its log.
    """
    started_at = time.monotonic()
    step = on_step or _ignore
    config.home.mkdir(parents=True, exist_ok=True)
    with _launcher_lock(config):
        pid = _running_pid(config)
        if pid is not None:
            _check_running_ports(config, pid)
            _wait_until_answering(config, pid, None, started_at + timeout_s)
            return StartResult(pid, already_running=True, seconds=time.monotonic() - started_at)
        _remove_stale_pid_file(config)
        _check_ports_free(config)
        java = _find_java()
        lib_dir = ensure_jars(config.jar_cache, on_step=step)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        config.logs_dir.mkdir(parents=True, exist_ok=True)
        _note_moved(config, step)
        _write_properties(config)
        _format_storage(config, java, lib_dir, step)
        step(f"starting Kafka on {config.bootstrap} (logs in {config.logs_dir})")
        process = _spawn(config, java, lib_dir)
        _write_pid_file(config, process.pid)
        try:
            _wait_until_answering(config, process.pid, process, time.monotonic() + timeout_s)
        except BaseException:
            _terminate(process.pid, STOP_TIMEOUT_S)
            _remove_pid_file(config)
            raise
        return StartResult(
            process.pid, already_running=False, seconds=time.monotonic() - started_at
        )


def stop(config: BrokerConfig, *, timeout_s: float = STOP_TIMEOUT_S) -> StopResult:
    """Stop the broker of ``config.home``: SIGTERM, then SIGKILL after ``timeout_s``.

    Returns once the process is gone and the pid file removed; a broker that
    is not running is not an error. The broker is the one the pid file names,
    on whatever ports it runs: one on other ports than ``config``'s is stopped
    too, with a warning that names them (and :attr:`StopResult.bootstrap`).
    """
    if not config.home.is_dir():
        return StopResult(pid=None, killed=False, stale_pid=None)
    with _launcher_lock(config):
        pid = _running_pid(config)
        if pid is None:
            return StopResult(pid=None, killed=False, stale_pid=_remove_stale_pid_file(config))
        actual = _as_configured(config)
        killed = _terminate(pid, timeout_s)
        _remove_pid_file(config)
        if actual is not None:
            log.warning(
                "stopped the Kafka broker (pid %d) of %s on %s (controller port %d), not on "
                "%s as EXNET_KAFKA_BOOTSTRAP (%s when unset) asks",
                pid,
                config.home,
                actual.bootstrap,
                actual.controller_port,
                config.bootstrap,
                f"{HOST}:{DEFAULT_PORT}",
            )
        bootstrap = (actual or config).bootstrap
        return StopResult(pid=pid, killed=killed, stale_pid=None, bootstrap=bootstrap)


def status(config: BrokerConfig) -> BrokerStatus:
    """Whether the broker of ``config.home`` runs, and whether it answers.

    A broker running there on other ports than ``config``'s raises a
    :class:`UserError` that reports it (pid, address, whether it answers) and
    names the ``EXNET_KAFKA_BOOTSTRAP`` that reaches it: what answers on
    ``config``'s port is another broker.
    """
    pid = _running_pid(config)
    if pid is not None:
        _check_running_ports(config, pid, probe=True)
    recorded = _read_pid_file(config)
    return BrokerStatus(
        running=pid is not None,
        pid=pid,
        bootstrap=config.bootstrap,
        answering=pid is not None
        and broker_answers(config.bootstrap, connection=config.connection()),
        stale_pid=recorded if pid is None else None,
        home=config.home,
        port_taken=pid is None and port_open(HOST, config.port, PROBE_TIMEOUT_S),
    )


def broker_answers(
    bootstrap: str, timeout_s: float = PROBE_TIMEOUT_S, connection: dict[str, Any] | None = None
) -> bool:
    """Whether a broker at ``bootstrap`` (``host:port[,host:port...]``) answers a
    metadata request within about ``timeout_s`` seconds (``connection``: the
    kafka-python security settings, for a broker that wants a login).

    An open port alone is not enough: a broker accepts connections a moment
    before it can serve requests. A closed port is detected without kafka-python,
    which would log each refused connection.
    """
    # Imported here: kafka-python takes ~0.2 s to import, and the CLI imports
    # this module for its defaults before it knows which command runs.
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    if not any(port_open(host, port, timeout_s) for host, port in _split_bootstrap(bootstrap)):
        return False
    timeout_ms = max(1, int(timeout_s * 1000))
    try:
        admin = KafkaAdminClient(
            **{**(connection or {}), "bootstrap_servers": bootstrap},
            client_id="exnet-broker-probe",
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
        )
    except (KafkaError, OSError):
        return False
    try:
        cluster = ask_until_answered(admin.describe_cluster)
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()
    return bool(cluster.get("brokers"))


#: Times :func:`ask_until_answered` asks (each of another broker, when one is gone).
ASK_ATTEMPTS: Final = 5


def ask_until_answered(request: Callable[[], T]) -> T:
    """``request()`` (a kafka-python admin request), asked again when the broker it went
    to does not answer, up to :data:`ASK_ATTEMPTS` times.

    kafka-python sends such a request to any broker in its metadata, and a cluster
    lists a dead broker until its controllers fence it: never, while two of three
    have lost their quorum. Asked once, `exnet status` said no broker answered
    while one did (an outside tester's find, 2026-12-03). A broker that refused a
    connection is held back for a while, so the next attempt goes to another.
    """
    from kafka.errors import (
        KafkaConnectionError,
        KafkaTimeoutError,
        NodeNotReadyError,
        RequestTimedOutError,
    )

    asked = 0
    while True:
        asked += 1
        try:
            return request()
        except (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError):
            if asked >= ASK_ATTEMPTS:
                raise


def ensure_jars(jar_cache: Path = JAR_CACHE, *, on_step: OnStep | None = None) -> Path:
    """The folder of the broker's jars for the current ``pom.xml``, fetched if missing.

    Each pom content gets its own folder, filled completely (in a temporary
    folder, then renamed) before anyone uses it.
    """
    if not POM_FILE.is_file():
        raise UserError(
            f"{POM_FILE} is missing: reinstall exnet (the launcher's pom is package data)"
        )
    key = hashlib.sha256(POM_FILE.read_bytes()).hexdigest()[:16]
    lib_dir = jar_cache / key
    if (lib_dir / _JARS_COMPLETE).is_file():
        return lib_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise UserError(f"`mvn` not found: {_INSTALL_MAVEN}; it fetches Kafka's jars")
    (on_step or _ignore)(
        f"fetching Apache Kafka {pinned_kafka_version()} jars with Maven into {lib_dir} "
        "(first start only; about a minute)"
    )
    jar_cache.mkdir(parents=True, exist_ok=True)
    partial = jar_cache / f".{key}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    command = [
        mvn,
        "-B",
        "-q",
        "-Dstyle.color=never",
        "-f",
        str(POM_FILE),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}",
        "-DincludeScope=runtime",
    ]
    try:
        done = subprocess.run(  # noqa: S603  # our own fixed command line
            command,
            capture_output=True,
            text=True,
            timeout=MVN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(partial, ignore_errors=True)
        raise UserError(
            f"Maven did not fetch Kafka's jars within {MVN_TIMEOUT_S:.0f} s "
            "(is Maven Central reachable?)"
        ) from None
    if done.returncode != 0 or not any(partial.glob("kafka_*.jar")):
        shutil.rmtree(partial, ignore_errors=True)
        output = _last_lines((done.stdout + done.stderr).splitlines(), LOG_TAIL_LINES)
        raise UserError(
            f"Maven could not fetch Kafka's jars (exit {done.returncode}; is Maven Central "
            f"reachable?):\n{output}\ncommand: {' '.join(command)}"
        )
    (partial / _JARS_COMPLETE).touch()
    try:
        partial.rename(lib_dir)
    except OSError as exc:  # another launcher finished the same folder first
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        shutil.rmtree(partial, ignore_errors=True)
        if not (lib_dir / _JARS_COMPLETE).is_file():
            raise UserError(f"{lib_dir} holds an incomplete jar folder: remove it") from None
    return lib_dir


def pinned_kafka_version() -> str:
    """The Kafka version ``exnet/kafka/pom.xml`` pins (``unknown`` if it says none)."""
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*<", POM_FILE.read_text(encoding="utf-8"))
    return match.group(1) if match else "unknown"


def server_properties(config: BrokerConfig) -> str:
    """The broker's ``server.properties``: one KRaft node (broker and controller) on loopback.

    Internal topics get one replica (there is one broker) and few partitions
    (each partition costs start-up time on 2 cores); consumer groups form
    without the default 3 s delay; topics are created only on purpose (by
    ``exnet init`` or tests), never by a typo in a producer.
    """
    port, controller = config.port, config.controller_port
    quorum = config.quorum or ((config.node_id, controller),)
    voters = ",".join(f"{node}@{HOST}:{voter_port}" for node, voter_port in quorum)
    replicas, in_sync = str(config.replicas), str(min(2, config.replicas))
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(config.node_id),
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(config.data_dir.resolve()),
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "default.replication.factor": replicas,
        "min.insync.replicas": in_sync,
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": "5",
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": in_sync,
        "transaction.state.log.num.partitions": "5",
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": in_sync,
        "share.coordinator.state.topic.num.partitions": "5",
        "group.initial.rebalance.delay.ms": "0",
    }
    if config.secrets is not None:
        found = broker_security.Secrets(config.secrets)
        settings |= broker_security.security_properties(found, port, controller)
    lines = [
        "# Written by exnet/broker.py at every `exnet broker start`; edits are overwritten.",
        *(f"{key}={value}" for key, value in settings.items()),
    ]
    return "\n".join(lines) + "\n"


# --- clusters ------------------------------------------------------------------

#: Records a cluster's size and id under its home (a single broker has none).
CLUSTER_FILE = "cluster.json"
#: The most nodes the launcher runs on one machine.
MAX_NODES = 9


@dataclass(frozen=True)
class Cluster:
    """The local brokers under one home: a single broker (in ``home`` itself, as
    before clusters) or ``nodes`` KRaft nodes, each broker and controller in one JVM,
    node ``i`` under ``home/<i>`` with its broker on ``port + 2(i-1)`` and its
    controller on the odd port above (9092/9093, 9094/9095, 9096/9097).
    ``security``: ``plaintext``, or ``sasl_ssl`` (:mod:`exnet.broker_security`,
    secrets under ``home/secrets``).
    """

    home: Path
    port: int = DEFAULT_PORT
    nodes: int = 1
    jar_cache: Path = JAR_CACHE
    security: str = "plaintext"

    def __post_init__(self) -> None:
        if self.security not in broker_security.SECURITY_MODES:
            raise UserError(
                f"--security must be one of {', '.join(broker_security.SECURITY_MODES)}, "
                f"not {self.security!r}"
            )
        if not 1 <= self.nodes <= MAX_NODES:
            raise UserError(f"--nodes must be 1 to {MAX_NODES}, not {self.nodes}")
        if self.port + 2 * self.nodes > 65536:
            raise UserError(f"{self.nodes} nodes from port {self.port} run past port 65535")

    @classmethod
    def from_settings(
        cls, settings: Settings, nodes: int | None = None, security: str | None = None
    ) -> Cluster:
        """The cluster ``settings.kafka_bootstrap`` names (its first address is node 1's
        broker), under ``<var_dir>/kafka``; ``nodes`` and ``security``: None for what
        it was started with (1 node, plaintext if never)."""
        bootstrap = settings.kafka_bootstrap.strip()
        servers = _split_bootstrap(bootstrap)
        if not servers or any(host not in (HOST, "localhost") for host, _ in servers):
            raise UserError(
                f"EXNET_KAFKA_BOOTSTRAP is {bootstrap!r}, but `exnet broker` runs only a "
                f"local broker or cluster on {HOST}: unset EXNET_KAFKA_BOOTSTRAP (or set it "
                f"to {HOST}:<port>) to use the local one, or manage that cluster yourself"
            )
        home = settings.var_dir / "kafka"
        recorded, recorded_security = _recorded(home)
        if security is not None:  # SASL_SSL, as EXNET_KAFKA_SECURITY_PROTOCOL spells it
            security = security.lower()
        if security is None:
            security = recorded_security or "plaintext"
        elif recorded_security is not None and recorded_security != security:
            raise UserError(
                f"{home} holds a {recorded_security} cluster: start it as it is (no "
                f"--security), or stop it and remove {home} to start it {security}"
            )
        elif recorded_security is None and security != "plaintext" and (home / "data").exists():
            raise UserError(
                f"{home} holds a plaintext broker's data: stop it and remove {home} to "
                f"start it {security}"
            )
        if nodes is None:
            nodes = recorded or 1
        elif recorded is not None and recorded != nodes:
            raise UserError(
                f"{home} holds a {recorded}-node cluster: start it as it is (no --nodes), or "
                f"stop it and remove {home} to start {nodes} nodes afresh"
            )
        elif recorded is None and nodes > 1 and (home / "data" / "meta.properties").exists():
            raise UserError(
                f"{home} holds a single broker's data: stop it and remove {home} to start "
                f"{nodes} nodes afresh"
            )
        return cls(home=home, port=servers[0][1], nodes=nodes, security=security)

    @property
    def secrets(self) -> Path | None:
        """Where a SASL_SSL cluster's keys, passwords and env files live."""
        return self.home / "secrets" if self.security == "sasl_ssl" else None

    @property
    def members(self) -> list[BrokerConfig]:
        """One :class:`BrokerConfig` per node, node 1 first."""
        if self.nodes == 1:
            return [
                BrokerConfig(
                    self.home, self.port, self.port + 1, self.jar_cache, secrets=self.secrets
                )
            ]
        ports = [(node, self.port + 2 * (node - 1)) for node in range(1, self.nodes + 1)]
        quorum = tuple((node, port + 1) for node, port in ports)
        return [
            BrokerConfig(
                self.home / str(node),
                port,
                port + 1,
                self.jar_cache,
                node_id=node,
                quorum=quorum,
                replicas=min(3, self.nodes),
                secrets=self.secrets,
            )
            for node, port in ports
        ]

    @property
    def bootstrap(self) -> str:
        """Every broker's address, for ``EXNET_KAFKA_BOOTSTRAP``."""
        return ",".join(member.bootstrap for member in self.members)


def start_cluster(
    cluster: Cluster,
    *,
    timeout_s: float = START_TIMEOUT_S,
    on_step: OnStep | None = None,
    sites: Iterable[str] = (),
    topic_prefix: str = "",
) -> list[StartResult]:
    """Start every node of ``cluster`` that is not running, and return once all answer.

    The nodes start together (a KRaft quorum needs most of its voters to elect a
    leader); nodes already running are left alone, so this also restarts the
    one that was killed. A node that fails to answer in ``timeout_s`` fails the
    start: the nodes this call started are stopped and a :class:`UserError`
    carries the tail of the failing node's log. A SASL_SSL cluster's principals
    (``sites``: the registered site ids; ``topic_prefix``: the deployment's) get
    their logins, ACLs and env files once it answers.
    """
    if cluster.nodes == 1 and cluster.security == "plaintext":
        return [start(cluster.members[0], timeout_s=timeout_s, on_step=on_step)]
    started_at = time.monotonic()
    step = on_step or _ignore
    for config in cluster.members:  # before any node starts: none joins a moved quorum
        pid = _running_pid(config)
        if pid is not None:
            _check_running_ports(config, pid)
    cluster_id = _cluster_id(cluster)
    if cluster.secrets is not None:
        broker_security.ensure_secrets(cluster.secrets, step)
    java = _find_java()
    lib_dir = ensure_jars(cluster.jar_cache, on_step=step)
    spawned: list[tuple[BrokerConfig, subprocess.Popen[bytes]]] = []
    running: list[tuple[BrokerConfig, int]] = []
    try:
        for config in cluster.members:
            config.home.mkdir(parents=True, exist_ok=True)
            with _launcher_lock(config):
                pid = _running_pid(config)
                if pid is not None:
                    _check_running_ports(config, pid)
                    running.append((config, pid))
                    continue
                _remove_stale_pid_file(config)
                _check_ports_free(config)
                config.data_dir.mkdir(parents=True, exist_ok=True)
                config.logs_dir.mkdir(parents=True, exist_ok=True)
                _note_moved(config, step)
                _write_properties(config)
                _format_storage(config, java, lib_dir, step, cluster_id)
                step(f"starting Kafka node {config.node_id} on {config.bootstrap}")
                process = _spawn(config, java, lib_dir)
                _write_pid_file(config, process.pid)
                spawned.append((config, process))
        deadline = time.monotonic() + timeout_s
        for config, process in spawned:
            _wait_until_answering(config, process.pid, process, deadline)
        for config, pid in running:
            _wait_until_answering(config, pid, None, deadline)
    except BaseException:
        for config, process in spawned:
            _terminate(process.pid, STOP_TIMEOUT_S)
            _remove_pid_file(config)
        raise
    if cluster.secrets is not None:
        found = broker_security.Secrets(cluster.secrets)
        principals = broker_security.sync_principals(found, cluster.bootstrap, sites, topic_prefix)
        step(f"logins, ACLs and env files of {len(principals)} principals in {cluster.secrets}")
    seconds = time.monotonic() - started_at
    results = {c.node_id: StartResult(p.pid, False, seconds) for c, p in spawned}
    results |= {c.node_id: StartResult(pid, True, seconds) for c, pid in running}
    return [results[config.node_id] for config in cluster.members]


def stop_cluster(cluster: Cluster, *, timeout_s: float = STOP_TIMEOUT_S) -> list[StopResult]:
    """Stop every node of ``cluster`` at once (SIGTERM, then SIGKILL after ``timeout_s``).

    All together: a node stopped after most of the others waits in vain for a
    controller quorum to acknowledge its shutdown.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=cluster.nodes) as pool:
        return list(pool.map(lambda config: stop(config, timeout_s=timeout_s), cluster.members))


def cluster_status(cluster: Cluster) -> list[BrokerStatus]:
    """Each node's :func:`status`, node 1 first."""
    return [status(config) for config in cluster.members]


def _recorded(home: Path) -> tuple[int | None, str | None]:
    """The size and security a cluster under ``home`` was first started with."""
    try:
        recorded = json.loads((home / CLUSTER_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {home / CLUSTER_FILE}: {exc}") from None
    return int(recorded["nodes"]), str(recorded.get("security", "plaintext"))


def _cluster_id(cluster: Cluster) -> str:
    """The cluster's KRaft id, made and recorded (with its size) at the first start."""
    path = cluster.home / CLUSTER_FILE
    cluster.home.mkdir(parents=True, exist_ok=True)
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["cluster_id"])
    except FileNotFoundError:
        pass
    cluster_id = _new_cluster_id()
    partial = path.with_suffix(".partial")
    partial.write_text(
        json.dumps({"nodes": cluster.nodes, "security": cluster.security, "cluster_id": cluster_id})
        + "\n",
        encoding="utf-8",
    )
    partial.replace(path)
    return cluster_id


# --- processes ------------------------------------------------------------------


def _spawn(config: BrokerConfig, java: str, lib_dir: Path) -> subprocess.Popen[bytes]:
    """Start the JVM in its own session, so that it outlives the launcher and
    a Ctrl-C in the launcher's terminal does not reach it."""
    command = [
        java,
        *HEAP_OPTS,
        *JVM_OPTS,
        f"-Dkafka.logs.dir={config.logs_dir.resolve()}",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG.as_uri()}",
        "-cp",
        f"{lib_dir.resolve()}/*",
        _KAFKA_MAIN,
        str(config.properties_file.resolve()),
    ]
    with config.console_log.open("wb") as console:
        return subprocess.Popen(  # noqa: S603  # our own fixed command line
            command,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            cwd=config.home,
            start_new_session=True,
        )


def _format_storage(
    config: BrokerConfig, java: str, lib_dir: Path, step: OnStep, cluster_id: str | None = None
) -> None:
    """Format the KRaft log dir with ``cluster_id`` (a new one by default), unless it
    was formatted before."""
    if (config.data_dir / "meta.properties").is_file():
        return
    step(f"formatting Kafka storage in {config.data_dir}")
    command = [
        java,
        *TOOL_JVM_OPTS,
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG.as_uri()}",
        f"-Dkafka.logs.dir={config.logs_dir.resolve()}",
        "-cp",
        f"{lib_dir.resolve()}/*",
    ]
    tool = [
        _STORAGE_TOOL,
        "format",
        "--cluster-id",
        cluster_id or _new_cluster_id(),
        "--config",
        str(config.properties_file.resolve()),
        "--ignore-formatted",
    ]
    try:
        with contextlib.ExitStack() as cleanup:
            if config.secrets is None:
                command += tool
            else:
                # The admin's password must not be on a command line, which every local
                # user may read (``ps``): the tool and its arguments go in a Java
                # argument file among the secrets, read by the launcher, removed after.
                tool += broker_security.format_arguments(broker_security.Secrets(config.secrets))
                argfile = cleanup.enter_context(_java_argument_file(config.secrets, tool))
                command.append(f"@{argfile}")
            done = subprocess.run(  # noqa: S603  # our own fixed command line
                command, capture_output=True, text=True, timeout=FORMAT_TIMEOUT_S, check=False
            )
    except subprocess.TimeoutExpired:
        raise UserError(f"formatting Kafka storage took over {FORMAT_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        output = _last_lines((done.stdout + done.stderr).splitlines(), LOG_TAIL_LINES)
        raise UserError(f"formatting Kafka storage in {config.data_dir} failed:\n{output}")


@contextlib.contextmanager
def _java_argument_file(directory: Path, arguments: list[str]) -> Iterator[Path]:
    """A file of ``arguments`` for the ``java`` launcher's ``@file`` (JDK 9+: main class and
    program arguments may be in it), readable by its owner only, removed on exit."""
    # Each argument double-quoted; within quotes the launcher reads a backslash as an escape.
    quoted = ('"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"' for arg in arguments)
    descriptor, name = tempfile.mkstemp(prefix="java-args-", dir=directory)  # mode 0600
    path = Path(name)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write("\n".join(quoted) + "\n")
        yield path
    finally:
        path.unlink(missing_ok=True)


def _new_cluster_id() -> str:
    """A Kafka cluster id, as ``StorageTool random-uuid`` makes them (without a JVM):
    16 random bytes, URL-safe base64, unpadded, not starting with '-'."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _wait_until_answering(
    config: BrokerConfig,
    pid: int,
    process: subprocess.Popen[bytes] | None,
    deadline: float,
) -> None:
    while True:
        if process is not None and process.poll() is not None:
            raise UserError(
                f"the Kafka broker exited with code {process.returncode} while starting; "
                f"{_log_tail(config)}"
            )
        if process is None and not _is_alive(pid):
            raise UserError(
                f"the Kafka broker (pid {pid}) exited while starting; {_log_tail(config)}"
            )
        if broker_answers(config.bootstrap, connection=config.connection()):
            return
        if time.monotonic() >= deadline:
            raise UserError(
                f"the Kafka broker (pid {pid}) did not answer on {config.bootstrap} in time; "
                f"{_log_tail(config)}"
            )
        time.sleep(POLL_INTERVAL_S)


def _terminate(pid: int, timeout_s: float) -> bool:
    """SIGTERM ``pid``, SIGKILL it after ``timeout_s``; True if it had to be killed."""
    if not _signal(pid, signal.SIGTERM) or _wait_gone(pid, timeout_s):
        return False
    _signal(pid, signal.SIGKILL)
    if not _wait_gone(pid, KILL_TIMEOUT_S):
        raise UserError(f"the Kafka broker (pid {pid}) survived SIGKILL")
    return True


def _signal(pid: int, signum: signal.Signals) -> bool:
    """Send ``signum``; False if the process is already gone."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        _reap(pid)
        return False
    except PermissionError:
        raise UserError(
            f"not allowed to signal the Kafka broker (pid {pid}): another user's"
        ) from None
    return True


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _is_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S / 2)
    return True


def _reap(pid: int) -> bool:
    """Collect ``pid`` if it is an exited child of this process; True if it was."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return reaped == pid


def _is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (an exited child of ours is reaped, a zombie is dead)."""
    if _reap(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        # state is the field after the parenthesised command name
        state = stat.read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _is_our_broker(pid: int, config: BrokerConfig) -> bool:
    """Whether ``pid`` is a live Kafka JVM started for ``config`` (not a reused pid)."""
    if not _is_alive(pid):
        return False
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): trust the pid file
        return True
    wanted = str(config.properties_file.resolve()).encode()
    return _KAFKA_MAIN.encode() in arguments and wanted in arguments


def _running_pid(config: BrokerConfig) -> int | None:
    pid = _read_pid_file(config)
    return pid if pid is not None and _is_our_broker(pid, config) else None


def _check_running_ports(config: BrokerConfig, pid: int, *, probe: bool = False) -> None:
    """Raise a :class:`UserError` if the broker ``pid`` of ``config.home`` binds other
    ports than ``config``'s (``probe``: say whether it answers on its own)."""
    actual = _as_configured(config)
    if actual is None:
        return
    answering = ""
    if probe:  # a closed port needs no login (nor a SASL_SSL node's secrets)
        answers = port_open(HOST, actual.port, PROBE_TIMEOUT_S) and broker_answers(
            actual.bootstrap, connection=actual.connection()
        )
        answering = ", answering" if answers else ", not answering yet"
    # node i of a cluster is on the cluster's port + 2(i-1): name every node's
    first = actual.port - 2 * (config.node_id - 1) if config.quorum else actual.port
    addresses = ",".join(f"{HOST}:{first + 2 * i}" for i in range(len(config.quorum) or 1))
    raise UserError(
        f"the Kafka broker of {config.home} runs (pid {pid}{answering}) on "
        f"{actual.bootstrap} (controller port {actual.controller_port}), but "
        f"EXNET_KAFKA_BOOTSTRAP ({HOST}:{DEFAULT_PORT} when unset) asks for "
        f"{config.bootstrap} (controller port {config.controller_port}): set "
        f"EXNET_KAFKA_BOOTSTRAP={addresses} to use that broker, or stop it with "
        f"`exnet broker stop` (it stops the broker of EXNET_VAR_DIR, whatever its port) "
        f"and start it on {config.bootstrap}"
    )


def _note_moved(config: BrokerConfig, step: OnStep) -> None:
    """Say so when a stopped broker is about to start on other ports than it last did."""
    actual = _as_configured(config)
    if actual is not None:
        step(
            f"the Kafka broker of {config.home} last ran on {actual.bootstrap}; starting it "
            f"on {config.bootstrap} as EXNET_KAFKA_BOOTSTRAP asks (its data is kept)"
        )


def _as_configured(config: BrokerConfig) -> BrokerConfig | None:
    """``config`` with the ports its home's ``server.properties`` binds, when they differ
    from ``config``'s; None when they are the same or the file does not say."""
    ports = _configured_ports(config.properties_file)
    if ports is None or ports == (config.port, config.controller_port):
        return None
    try:
        return replace(config, port=ports[0], controller_port=ports[1])
    except UserError:  # a hand-edited file with nonsense ports: not a broker we started
        return None


def _configured_ports(properties_file: Path) -> tuple[int, int] | None:
    """The broker and controller ports of ``listeners`` in ``properties_file``
    (``PLAINTEXT://`` or ``SASL_SSL://``, and ``CONTROLLER://``); None if it has none."""
    try:
        text = properties_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    listeners = ""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "listeners":
            listeners = value
    ports: dict[bool, int] = {}
    for listener in listeners.split(","):
        name, _, address = listener.strip().partition("://")
        port = address.rpartition(":")[2]
        if port.isdigit():
            ports[name.strip().upper() == "CONTROLLER"] = int(port)
    if False not in ports or True not in ports:
        return None
    return ports[False], ports[True]


# --- files ------------------------------------------------------------------------


def _write_properties(config: BrokerConfig) -> None:
    """``server.properties``, readable by its owner only (a secured node's holds passwords)."""
    config.properties_file.unlink(missing_ok=True)
    descriptor = os.open(config.properties_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(server_properties(config))


def _read_pid_file(config: BrokerConfig) -> int | None:
    try:
        text = config.pid_file.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _write_pid_file(config: BrokerConfig, pid: int) -> None:
    partial = config.pid_file.with_suffix(".pid.partial")
    partial.write_text(f"{pid}\n", encoding="ascii")
    partial.replace(config.pid_file)


def _remove_pid_file(config: BrokerConfig) -> None:
    config.pid_file.unlink(missing_ok=True)


def _remove_stale_pid_file(config: BrokerConfig) -> int | None:
    """Remove a pid file that names no running broker; return the pid it named."""
    if not config.pid_file.exists():
        return None
    stale = _read_pid_file(config)
    _remove_pid_file(config)
    return stale


@contextlib.contextmanager
def _launcher_lock(config: BrokerConfig) -> Iterator[None]:
    """Serialise start and stop of one home across processes."""
    with config.lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _log_tail(config: BrokerConfig) -> str:
    parts = []
    for log in (config.console_log, config.server_log):
        try:
            with log.open(encoding="utf-8", errors="replace") as handle:
                tail = _last_lines(handle, LOG_TAIL_LINES)
        except FileNotFoundError:
            continue
        if tail.strip():
            parts.append(f"last lines of {log}:\n{tail}")
    return "\n".join(parts) if parts else f"no log was written under {config.logs_dir}"


def _last_lines(lines: Iterable[str], count: int) -> str:
    return "\n".join(line.rstrip("\n") for line in collections.deque(lines, maxlen=count))


# --- environment --------------------------------------------------------------------


def _find_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise UserError(f"`java` not found: {_INSTALL_JAVA}")
    try:
        done = subprocess.run(  # noqa: S603  # fixed command line
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"`{java} -version` failed ({exc}): {_INSTALL_JAVA}") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if match is None:
        raise UserError(f"cannot tell the version of {java}: {_INSTALL_JAVA}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392" is Java 8
        major = int(match.group(2))
    if major < MIN_JAVA_MAJOR:
        raise UserError(f"{java} is Java {major}; Kafka 4 needs Java 17+: {_INSTALL_JAVA}")
    return java


def _check_ports_free(config: BrokerConfig) -> None:
    for port in (config.port, config.controller_port):
        if port_open(HOST, port, PROBE_TIMEOUT_S):
            raise UserError(
                f"{HOST}:{port} is already in use by another program, not by a broker that "
                f"this launcher started from {config.home} (no live pid in {config.pid_file}). "
                "Stop that program, or, if it is a Kafka broker you want to use, point exnet "
                "at it with EXNET_KAFKA_BOOTSTRAP"
            )


def port_open(host: str, port: int, timeout_s: float) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout_s`` (no request)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _split_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    servers = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if host and port.isdigit():
            servers.append((host.strip("[]"), int(port)))
    return servers


def _ignore(_message: str) -> None:
    pass
