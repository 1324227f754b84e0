"""``exnet init`` and ``exnet up``: the pipeline assembled in one place, in the order data flows.

Roles. Stream workers (Faust) scale out through their consumer group. The
sink writes ClickHouse: against a server every process runs one (its own
consumer group shares the partitions); with embedded chDB only one process
can hold the database, so every other ``exnet up`` runs its stream workers and
waits as a standby writer, taking over when the holder stops or dies.

``exnet up`` (role auto) runs its writer in a child process of its own
(:class:`_SinkProcess`), on the machine's other core; ``--role sink`` runs it
in the process itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import http.client
import logging
import os
import pickle
import platform
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from types import FrameType
from typing import Any, Final, TypeVar, cast

from contracts.errors import RecoverableError
from contracts.registry import load_registry
from contracts.topics import INPUT_TOPICS, topic_name
from exnet.admin import ensure_topics, other_pipelines, replication_factor
from exnet.httpserver import OpsServer
from exnet.logs import collapse_repeats, demote_retried_errors, drop_close_races, hide_secrets
from exnet.metrics import Metrics
from exnet.monitor import Backlog, LagMonitor
from exnet.settings import CLICKHOUSE_CLIENT_LOGGERS, LOG_FORMAT, Settings
from sinks.client import connect
from sinks.consumer import ROW_TABLES, SinkConsumer
from sinks.errors import DatabaseLocked
from sinks.migrate import apply_migrations, load_registry_tables
from sinks.query import QueryEndpoint
from sinks.verify import ViewCheck, rows_of
from sinks.writer import ClickHouseWriter
from streams.rollup import LiveViews

__all__ = [
    "EXIT_BUG",
    "EXIT_INVALID_RATIO",
    "InitReport",
    "Role",
    "configure_logging",
    "initialize",
    "run_up",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Seconds between a standby writer's attempts to take the embedded database.
STANDBY_RETRY_S = 2.0
#: Seconds a writer that does not stand by (``--role sink``) keeps asking for the
#: embedded database before it gives up, and seconds between its attempts: `exnet sql`
#: and `exnet status` open it for a moment when no writer holds it.
LOCKED_WAIT_S = 30.0
LOCKED_RETRY_S = 0.5
#: Seconds between a drain's checks whether everything is written.
DRAIN_CHECK_S = 0.2
#: Seconds between reads of every stage's lag (the gauges; the progress bar), during a
#: drain and otherwise.
DRAIN_LAG_S = 2.0
LAG_CHECK_S = 5.0
#: Seconds between the stream worker's checks for a stop requested by another thread.
STOP_CHECK_S = 0.25
#: Exit status of ``exnet up`` when a stream agent failed (a bug; EX_SOFTWARE).
EXIT_BUG = 70
#: Exit status when the invalid-ratio guard stopped the worker (EX_CONFIG).
EXIT_INVALID_RATIO = 78
#: Seconds between the writer process's checks that its parent still runs.
PARENT_CHECK_S = 0.5
#: Seconds a stopping writer process may take to flush and commit before it is killed.
SINK_STOP_S = 60.0
#: Where the writer process serves its metrics and readiness, for its parent alone.
LOOPBACK = "127.0.0.1"
#: Seconds the parent waits for the writer process's /metrics or /readyz.
CHILD_HTTP_TIMEOUT_S = 2.0
#: What asking the writer process may raise when it does not answer, or stops in the
#: middle of an answer (it is stopping: ``IncompleteRead``, ``BadStatusLine``, a reset
#: connection). Not ``OSError`` alone: ``http.client.HTTPException`` is not one.
_CHILD_GONE: Final = (OSError, http.client.HTTPException)
#: Allocations between young-generation garbage collections (CPython's default: 700).
#: Measured over 108k events: the collector took 15-20% of the stream worker's time
#: at the default; it runs ~14x less often at this one.
GC_YOUNG_THRESHOLD = 10_000
#: glibc malloc's settings for exnet's processes (mallopt parameter, value), each
#: unless its ``MALLOC_*_`` variable is set: two arenas, not eight per core (each
#: thread that allocates may otherwise get one, holding its freed memory), and blocks
#: of 128 KiB and more (fetched record batches, produced batches, inserts' JSON) in
#: mappings of their own, returned to the system when freed, with a fixed threshold
#: (glibc's default grows it to 32 MiB after the first large block is freed, and
#: those blocks then stay in the heap). Measured over 996,054 events: the stream
#: worker's peak RSS 592 MiB by default, 562 with two arenas, 538 with both, for no
#: visible change in the drain's time (166, 173, 170 s).
MALLOC_SETTINGS: Final[tuple[tuple[str, int, int], ...]] = (
    ("MALLOC_ARENA_MAX", -8, 2),  # M_ARENA_MAX
    ("MALLOC_MMAP_THRESHOLD_", -3, 128 * 1024),  # M_MMAP_THRESHOLD
    ("MALLOC_TRIM_THRESHOLD_", -1, 1024 * 1024),  # M_TRIM_THRESHOLD
)
#: Loggers that say too much below WARNING, unless the log level is DEBUG.
_CHATTY_LOGGERS = ("kafka", "aiokafka", "faust", "mode")


class Role(StrEnum):
    AUTO = "auto"  # stream workers, plus the writer when this process can hold it
    STREAM = "stream"  # stream workers only
    SINK = "sink"  # the ClickHouse writer only


@dataclass(frozen=True)
class InitReport:
    topics_created: list[str]
    migrations_applied: list[str]
    #: The embedded database was held by another process (a running ``exnet up``,
    #: whose writer applies the migrations when it takes the database): not checked.
    clickhouse_held: bool = False


def initialize(settings: Settings, *, clickhouse: bool = True) -> InitReport:
    """Create the topics and the ClickHouse tables if missing (idempotent).

    An embedded database that another process holds is left to it
    (``clickhouse_held``): every exnet writer migrates the database it takes.
    """
    registry = load_registry(settings.registry_path)  # a bad registry fails before anything
    created = ensure_topics(settings)
    applied: list[str] = []
    if clickhouse:
        try:
            client = connect(settings, create_database=True)
        except DatabaseLocked:
            return InitReport(created, applied, clickhouse_held=True)
        try:
            applied = apply_migrations(client, settings.clickhouse_database)
            load_registry_tables(client, settings.clickhouse_database, registry)
        finally:
            client.close()
    return InitReport(created, applied)


def _warn_of_other_pipelines(settings: Settings) -> None:
    others = other_pipelines(settings)
    if others:
        log.warning(
            "another pipeline runs on the topics of prefix %r: consumer group(s) %s, not "
            "%r. Both write the same internal topics and both sinks write both outputs "
            "into their databases; give each pipeline its own EXNET_TOPIC_PREFIX",
            settings.topic_prefix,
            ", ".join(others),
            settings.consumer_group,
        )


class _SinkRole(threading.Thread):
    """Owns the ClickHouse writer (and, embedded, the SQL endpoint) while it runs, and
    compares the stream-written views with their reference every
    ``EXNET_VERIFY_INTERVAL_S`` seconds (:class:`sinks.verify.ViewCheck`)."""

    def __init__(
        self, settings: Settings, metrics: Metrics, standby: bool, on_error: Callable[[], None]
    ) -> None:
        super().__init__(name="exnet-sink", daemon=True)
        self._on_error = on_error
        self._settings = settings
        self._metrics = metrics
        self._standby = standby
        self._halt = threading.Event()
        self._sink: SinkConsumer | None = None
        self.error: BaseException | None = None
        self.writing = threading.Event()
        #: True while another process holds the embedded database and this one waits.
        self.standing_by = False

    def stop(self) -> None:
        self._halt.set()
        if self._sink is not None:
            self._sink.stop()

    def run(self) -> None:
        from kafka.errors import SaslAuthenticationFailedError

        try:
            self._run()
        except SaslAuthenticationFailedError as exc:  # one line: it is not a bug
            log.error(
                "the sink stopped: %s after its start (was its password changed or revoked? "
                "EXNET_KAFKA_USERNAME, EXNET_KAFKA_PASSWORD); what it had not written waits "
                "in Kafka. Exiting: started again, exnet up waits for its login",
                self._settings.refused_login,
            )
            self.error = exc
            self._on_error()
        except DatabaseLocked as exc:  # one line: it is not a bug
            log.error("the sink stopped: %s", exc)
            self.error = exc
            self._on_error()
        except BaseException as exc:
            log.exception("the sink stopped with an error")
            self.error = exc
            self._on_error()  # take the whole process down cleanly

    def _run(self) -> None:
        settings = self._settings
        database = settings.clickhouse_database
        give_up_at = time.monotonic() + LOCKED_WAIT_S
        waited = False
        while True:
            if self._halt.is_set():
                return
            try:
                client = connect(settings, create_database=True)
                break
            except DatabaseLocked:
                # A standby waits for good; `--role sink` for LOCKED_WAIT_S, as `exnet sql`
                # and `exnet status` hold the database for a moment (a sink restarted while
                # status was polled exited 1 at once: an outside tester's find).
                if not self._standby and time.monotonic() >= give_up_at:
                    raise DatabaseLocked(
                        f"the embedded database {settings.clickhouse_dsn.removeprefix('chdb://')} "
                        f"was still held by another process after {LOCKED_WAIT_S:.0f} s: "
                        "most likely another `exnet up` writing to it, as one process owns "
                        "an embedded database; run this one with `--role stream`, or stop "
                        "the other first"
                    ) from None
                if not waited and self._standby:
                    log.info(
                        "the embedded database is held by another exnet; standing by as writer"
                    )
                elif not waited:
                    log.warning(
                        "the embedded database is held by another process (exnet sql and "
                        "exnet status hold it for a moment); asking again for %.0f s",
                        LOCKED_WAIT_S,
                    )
                waited = True
                self.standing_by = self._standby
                self._halt.wait(STANDBY_RETRY_S if self._standby else LOCKED_RETRY_S)
        self.standing_by = False
        endpoint: QueryEndpoint | None = None
        read_client = None
        check_client = None
        view_check: ViewCheck | None = None
        backlog: Backlog | None = None
        try:
            apply_migrations(client, database)
            load_registry_tables(client, database, load_registry(settings.registry_path))
            writer = ClickHouseWriter(client, database)
            writer.setup(ROW_TABLES)
            if settings.embedded_clickhouse:
                read_client = connect(settings, readonly=True)
                endpoint = QueryEndpoint(settings, read_client)
                endpoint.start()
            if settings.verify_interval_s > 0:
                if endpoint is not None:
                    # chDB: the endpoint's read-only session, one query at a time under
                    # its lock (analysts' queries wait for the check's, and vice versa).
                    raw_query = endpoint.query
                else:  # a server: a read-only session of the check's own
                    check_client = connect(settings, readonly=True)
                    raw_query = partial(_raw_query, check_client)
                backlog = Backlog(settings)
                view_check = ViewCheck(
                    rows_of(raw_query),
                    database,
                    self._metrics,
                    settings.verify_interval_s,
                    backlog,
                )
            self._sink = SinkConsumer(settings, writer, self._metrics)
            if self._halt.is_set():
                return
            self._metrics.role.labels(role="sink").set(1)
            self.writing.set()
            log.info("writing ClickHouse database %r", database)
            if view_check is not None:
                view_check.start()
            self._sink.run()
        finally:
            self.writing.clear()
            self._metrics.role.labels(role="sink").set(0)
            if view_check is not None and view_check.is_alive():
                view_check.stop()
                view_check.join()  # a check in flight ends before its session closes
            if backlog is not None:
                backlog.close()
            if check_client is not None:
                check_client.close()
            if endpoint is not None:
                endpoint.stop()
            if read_client is not None:
                read_client.close()
            client.close()


class _SinkProcess:
    """The ClickHouse writer of ``exnet up`` (role auto), in a child process.

    Why a process: the sink's Kafka fetches and rows are Python, which held the
    GIL for about 15% of a drain beside the stream agents; as a thread it took
    that time from them. In a process of its own it runs on another core
    (108k events, whole-process timings: 18-19 s against 22-23 s with the thread).

    The child runs :func:`run_up` with the sink role, standing by like the thread
    did while another exnet holds an embedded database, and serves its metrics
    and readiness on a loopback port (whatever ``metrics_host`` says: they are
    this process's to serve): this process's ``/metrics`` merges them
    (:func:`exnet.metrics.merged_exposition`) and its readiness includes the
    child's. :meth:`stop` sends it SIGTERM (it flushes and commits); a parent
    killed with -9 takes it down too, since it checks every
    :data:`PARENT_CHECK_S` that its parent still runs. A child that exits on its
    own stops this process (``on_exit``), which exits 1 unless the child's status was 0
    or it died of SIGTERM or SIGINT (a stop asked of the whole process group).
    """

    def __init__(self, settings: Settings, on_exit: Callable[[], None]) -> None:
        self._port = _free_port(LOOPBACK)
        self._url = f"http://{LOOPBACK}:{self._port}"
        self._settings = settings.model_copy(
            update={"metrics_host": LOOPBACK, "metrics_port": self._port}
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._watcher = threading.Thread(target=self._watch, name="exnet-sink-watch", daemon=True)
        self._on_exit = on_exit
        self._stopping = False
        self.failed = False

    def start(self) -> None:
        # A fresh interpreter (no forked copy of Faust's loop), started by subprocess, not
        # multiprocessing: its "spawn" starts a resource tracker process too (11 MB).
        self._process = subprocess.Popen(  # noqa: S603  # this interpreter, our own module
            # -P: not the working directory first on sys.path (it may hold other code)
            [sys.executable, "-P", "-c", WRITER_PROCESS_CODE],
            stdin=subprocess.PIPE,
        )
        assert self._process.stdin is not None  # noqa: S101  # stdin=PIPE
        with self._process.stdin as pipe:  # the settings, secrets included: not on argv
            pipe.write(pickle.dumps((self._settings, os.getpid())))
        self._watcher.start()

    def _watch(self) -> None:
        # The one thread that waits for the child (two waiters race to reap it).
        assert self._process is not None  # noqa: S101  # started
        status = self._process.wait()
        if self._stopping:
            return
        # 0: it was asked to stop too (Ctrl-C, or a SIGTERM to the process group, reaches
        # both). Killed by that very signal: it came before the child had installed its
        # handler, while it started (a SIGTERM 3 s into a start on a loaded machine made
        # `exnet up` exit 1, 2026-12-04); it had nothing to flush yet.
        if status not in (0, -signal.SIGTERM, -signal.SIGINT):
            log.error("the ClickHouse writer process exited (status %s)", status)
            self.failed = True
        self._on_exit()

    def stop(self) -> None:
        self._stopping = True
        if self._process is None:
            return  # never started
        self._process.terminate()  # SIGTERM, unless it was reaped: flush, commit, exit
        self._watcher.join(SINK_STOP_S)
        if self._watcher.is_alive():
            log.error("the ClickHouse writer did not stop in %.0f s: killing it", SINK_STOP_S)
            self._process.kill()
            self._watcher.join()
        if self._process.returncode not in (0, -signal.SIGTERM):
            self.failed = True

    def ready(self) -> bool:
        """The child's readiness: writing, or standing by; False while it does not
        answer, or breaks off its answer. Never raises (it runs in each scrape)."""
        try:
            with urllib.request.urlopen(  # noqa: S310  # our own loopback URL
                self._url + "/readyz", timeout=CHILD_HTTP_TIMEOUT_S
            ) as reply:
                return bool(reply.status == 200)
        except _CHILD_GONE:
            return False

    def metrics(self) -> str | None:
        """The child's ``/metrics`` text; None while it does not answer, or when its
        answer breaks off (a child stopping closes its connections mid-reply). Never
        raises: the parent's ``/metrics`` then serves its own metrics alone."""
        try:
            with urllib.request.urlopen(  # noqa: S310  # our own loopback URL
                self._url + "/metrics", timeout=CHILD_HTTP_TIMEOUT_S
            ) as reply:
                text: str = reply.read().decode()
                return text
        except _CHILD_GONE:
            return None


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


#: What the writer process runs: :func:`writer_process_main`.
WRITER_PROCESS_CODE: Final = "import exnet.runner; exnet.runner.writer_process_main()"


def writer_process_main() -> None:
    """The writer process's body (:class:`_SinkProcess`): its settings and its
    parent's pid come pickled on stdin."""
    settings, parent = pickle.loads(sys.stdin.buffer.read())  # noqa: S301  # from our parent
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    configure_logging(settings)

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            threading.Event().wait(PARENT_CHECK_S)
        log.warning("exnet up (pid %d) is gone: the ClickHouse writer stops", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=exit_with_parent, name="exnet-parent-watch", daemon=True).start()
    sys.exit(run_up(settings, Role.SINK, standby=True, monitor=False))


def _tune_malloc() -> None:
    """Apply :data:`MALLOC_SETTINGS` to this process (glibc only; elsewhere nothing)."""
    if platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(None)
    for variable, parameter, value in MALLOC_SETTINGS:
        if variable not in os.environ and not libc.mallopt(parameter, value):
            log.warning("glibc refused mallopt(%d, %d)", parameter, value)


def _tune_gc() -> None:
    """Collect garbage less often, and never scan what start-up built (modules, the
    app): the stream worker allocates a few short-lived objects per event, and
    each young collection that overflowed into a full one walked every object."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def configure_logging(settings: Settings) -> None:
    """``settings.log_level`` for exnet's loggers; Kafka's and Faust's only warn, and
    the Kafka clients' repeated lines are collapsed (:mod:`exnet.logs`), unless the
    level is DEBUG."""
    logging.getLogger().setLevel(settings.log_level)
    hide_secrets(settings.secrets)  # kafka-python logs its whole configuration at DEBUG
    for library in CLICKHOUSE_CLIENT_LOGGERS:  # the CLI quiets them
        logging.getLogger(library).setLevel(logging.NOTSET)
    drop_close_races()  # kafka-python's traceback for a socket closed on purpose
    demote_retried_errors()  # the clients' ERRORs for what they retry: a broker away
    if settings.log_level.upper() != "DEBUG":
        for chatty in _CHATTY_LOGGERS:
            logging.getLogger(chatty).setLevel(logging.WARNING)
        collapse_repeats()  # a deleted topic made 143,000 lines in 20 s


def _raw_query(client: Any, sql: str, fmt: str) -> bytes:
    result: bytes = client.raw_query(sql, fmt=fmt)
    return result


class _StopFlag:
    """SIGTERM/SIGINT (or a drained pipeline) ask the process to stop, once, at any moment.

    Python-level handlers are installed first thing, so a signal during
    start-up is never fatal (before them, while the command line is still
    imported, :mod:`exnet.entry` makes a stop exit 0 at once); while the Faust
    worker runs, its loop owns the signals, and a timer turns a stop requested
    by another thread into one.
    """

    def __init__(self, stopping: str = "stopping") -> None:
        self.event = threading.Event()
        #: What the log says a signal does ("signal 15: stopping").
        self._stopping = stopping
        #: Called by :meth:`request` (from any thread) while a Faust worker runs.
        self.forward: Callable[[], None] | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received(signum)

    def received(self, signum: int) -> None:
        """Signal ``signum`` asks to stop (here, or in the Faust worker that owns the
        signals while it runs)."""
        # A stop asked already (a drain done, a failed writer) is forwarded to the Faust
        # worker as this process's own SIGTERM: only a stop that comes from outside is
        # news ("signal 15: stopping" after a drain that ended by itself misled).
        if not self.event.is_set():
            log.info("signal %d: %s", signum, self._stopping)
        self.event.set()

    def request(self) -> None:
        self.event.set()
        forward = self.forward
        if forward is not None:
            forward()


class _DrainProgress:
    """A progress bar of messages left to process, for `up --drain` on a terminal."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=False,
        )
        self._task = self._bar.add_task("draining (messages)", total=None)
        self._most = 0
        self._bar.start()

    def update(self, remaining: int) -> None:
        self._most = max(self._most, remaining)
        self._bar.update(self._task, total=self._most, completed=self._most - remaining)

    def close(self) -> None:
        self._bar.stop()


def run_up(
    settings: Settings,
    role: Role = Role.AUTO,
    drain: bool = False,
    *,
    standby: bool = False,
    monitor: bool = True,
) -> int:
    """Run until SIGTERM/SIGINT (or, with ``drain``, until every input is written); exit status.

    ``standby``: whether the sink role waits while another process holds the
    embedded database (role auto's writer process does); ``monitor``: whether this process reads
    the pipeline's lag and warns of another pipeline on its topics (the writer process of
    role auto leaves both to its parent).
    """
    # The writer process is signalled by its exnet up whenever that stops, a drain's end
    # included: "signal 15: stopping" from it read as if someone had stopped exnet up.
    writer = "the ClickHouse writer stops, as its exnet up does (a stop, or a drain's end)"
    stop = _StopFlag(writer if standby else "stopping")
    stop.install()
    _tune_malloc()  # before any thread starts: each may take an arena
    metrics = Metrics()
    sink_role: _SinkRole | None = None
    sink_process: _SinkProcess | None = None
    lag: LagMonitor | None = None  # started below; ready() may be asked before
    runs_streams = role in (Role.AUTO, Role.STREAM)
    consuming = threading.Event()  # the stream workers hold partitions, tables recovered
    summaries = threading.Event()  # the summaries' rows are in Kafka, or another's to send

    def ready() -> bool:
        """Consuming (stream role) and writing or standing by (sink role), with Kafka
        answering the lag monitor (when this process runs one)."""
        streams_ok = not runs_streams or consuming.is_set()
        if role is Role.SINK:  # no sink role yet: still waiting for Kafka's login
            sink_ok = sink_role is not None and (
                sink_role.writing.is_set() or sink_role.standing_by
            )
        else:
            sink_ok = True
        process_ok = sink_process is None or sink_process.ready()
        kafka_ok = lag is None or not lag.kafka_unreachable
        return streams_ok and sink_ok and process_ok and kafka_ok and not stop.event.is_set()

    metrics.ready.set_function(lambda: 1.0 if ready() else 0.0)  # evaluated at each scrape

    live = LiveViews() if runs_streams else None
    ops = OpsServer(
        settings.metrics_host,
        settings.metrics_port,
        metrics,
        ready,
        live,
        child_metrics=lambda: sink_process.metrics() if sink_process is not None else None,
    )
    ops.start()
    try:
        prepared = _prepare_kafka(settings, stop) if _logged_in(settings, metrics, stop) else None
        if prepared is not None and monitor:  # not again in role auto's writer process
            _warn_of_other_pipelines(prepared)
    except BaseException:
        ops.stop()
        raise
    if prepared is None:
        ops.stop()
        return 0  # stopped while Kafka refused the login or a request: nothing was consumed
    settings = prepared
    metrics.preset(topic_name(topic, settings.topic_prefix) for topic in INPUT_TOPICS)
    if role is Role.AUTO:
        sink_process = _SinkProcess(settings, on_exit=stop.request)
    elif role is Role.SINK:
        sink_role = _SinkRole(
            settings,
            metrics,
            standby=standby and settings.embedded_clickhouse,
            on_error=stop.request,
        )
    progress = _DrainProgress() if drain and sys.stderr.isatty() else None
    lag = (
        LagMonitor(
            settings,
            metrics,
            interval=DRAIN_LAG_S if drain else LAG_CHECK_S,
            on_drained=stop.request if drain else None,
            on_lag=progress.update if progress is not None else None,
            drain_check=DRAIN_CHECK_S,
            settled=summaries.is_set if runs_streams else lambda: True,
        )
        if monitor
        else None
    )
    if sink_role is not None:
        sink_role.start()
    if sink_process is not None:
        sink_process.start()
    if lag is not None:
        lag.start()

    stream_status = 0
    try:
        if runs_streams:
            metrics.role.labels(role="stream").set(1)
            stream_status = _run_streams(settings, metrics, stop, consuming, live, summaries)
        else:
            while not stop.event.wait(1.0):
                pass
    finally:
        if lag is not None:
            lag.stop()
        if progress is not None:
            progress.close()
        if sink_role is not None:
            sink_role.stop()
            sink_role.join()
        if sink_process is not None:
            sink_process.stop()
        ops.stop()
    if stream_status:
        return stream_status
    if sink_role is not None and sink_role.error is not None:
        return 1
    if sink_process is not None and sink_process.failed:
        return 1
    return 0


#: Seconds between logins Kafka refused: doubling from 1 up to this.
LOGIN_RETRY_MAX_S = 60.0
#: Milliseconds one login attempt may take.
LOGIN_TIMEOUT_MS = 5_000


def _prepare_kafka(settings: Settings, stop: _StopFlag) -> Settings | None:
    """The topics created if missing (``init``'s Kafka half); ``settings`` with the
    replication factor they got, counted once: Faust's internal topics get the same.
    None when stopped meanwhile.

    A request Kafka fails (a broker of the cluster died a moment ago, and its peers
    do not know it yet) is retried for :data:`KAFKA_START_RETRY_S` seconds, not a
    failed start: a worker restarted with a broker by the same host's reboot exited
    2 at once, "could not count the Kafka cluster's brokers". No broker answering
    at all stays an error at once (:func:`exnet.admin.admin_client`).
    """
    from kafka.errors import KafkaError
    from tenacity import (
        Retrying,
        retry_if_exception_type,
        stop_after_delay,
        stop_when_event_set,
        wait_exponential,
    )

    def prepared() -> Settings:
        ready = settings.model_copy(update={"replication_factor": replication_factor(settings)})
        initialize(ready, clickhouse=False)  # topics; the writer migrates ClickHouse
        return ready

    def waiting(state: Any) -> None:
        log.warning(
            "Kafka failed a request at start (%s); retrying in %.1f s",
            state.outcome.exception(),
            state.next_action.sleep,
        )

    retrying = Retrying(
        retry=retry_if_exception_type((RecoverableError, KafkaError)),
        wait=wait_exponential(multiplier=0.5, max=5),
        stop=stop_after_delay(KAFKA_START_RETRY_S) | stop_when_event_set(stop.event),
        sleep=lambda seconds: None if stop.event.wait(seconds) else None,  # a stop cuts it short
        before_sleep=waiting,
        reraise=True,
    )
    try:
        return _unless_stopped(stop, lambda: retrying(prepared))
    except (RecoverableError, KafkaError):
        if stop.event.is_set():
            return None
        raise


def _unless_stopped(stop: _StopFlag, work: Callable[[], _T]) -> _T | None:
    """``work()``'s result, run in a thread of its own; None as soon as a stop is
    requested, without waiting for it (the thread is a daemon: nothing of it is kept).

    Why: a client's first connection to Kafka blocks for its bootstrap timeout (30 s)
    when no broker answers, deaf to the stop flag; a SIGTERM then took 26 s and ended
    in exit 2, "no Kafka broker answers", against SPEC §5's exit 0 (an outside
    reviewer's find, 2026-12-05). ``work`` must be safe to abandon: creating topics
    that may exist already is.
    """
    outcome: Future[_T] = Future()

    def run() -> None:
        try:
            outcome.set_result(work())
        except BaseException as exc:  # handed to the waiting thread, raised there
            outcome.set_exception(exc)

    threading.Thread(target=run, name="exnet-kafka-start", daemon=True).start()
    while not outcome.done():
        if stop.event.wait(STOP_CHECK_S):
            return None
    return outcome.result()


#: Seconds `exnet up` retries the start's requests to Kafka that fail (_prepare_kafka).
KAFKA_START_RETRY_S = 120.0


def _logged_in(settings: Settings, metrics: Metrics, stop: _StopFlag) -> bool:
    """Wait, retrying with backoff, while Kafka refuses this process's login or TLS
    certificate (an operator may fix the principal meanwhile: nothing is consumed
    or committed). False if stopped meanwhile. A broker that does not answer at
    all is an error at once (the `init` that follows says so)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError
    from tenacity import Retrying, retry_if_result, stop_never, wait_exponential

    from exnet.settings import KafkaRefusals

    if settings.kafka_security_protocol == "PLAINTEXT":
        return True  # no login to refuse

    def refused() -> str | None:
        with KafkaRefusals(settings) as refusals:
            try:
                KafkaAdminClient(
                    **settings.kafka_client_config(),
                    client_id="exnet-login",
                    bootstrap_timeout_ms=LOGIN_TIMEOUT_MS,
                    request_timeout_ms=LOGIN_TIMEOUT_MS,
                ).close()
            except KafkaError:
                return refusals.reason()
        return None

    def waiting(state: Any) -> None:
        metrics.kafka_login_refused.inc()
        metrics.kafka_login_waiting.set(1)
        log.error(
            "%s; retrying in %.0f s (nothing is consumed or committed meanwhile)",
            state.outcome.result(),
            state.next_action.sleep,
        )

    retrying = Retrying(
        retry=retry_if_result(lambda reason: reason is not None and not stop.event.is_set()),
        wait=wait_exponential(multiplier=1, max=LOGIN_RETRY_MAX_S),
        stop=stop_never,
        sleep=lambda seconds: None if stop.event.wait(seconds) else None,  # a stop cuts it short
        before_sleep=waiting,
    )
    retrying(refused)
    metrics.kafka_login_waiting.set(0)
    return not stop.event.is_set()


def _run_streams(
    settings: Settings,
    metrics: Metrics,
    stop: _StopFlag,
    consuming: threading.Event,
    live: LiveViews | None,
    summaries: threading.Event,
) -> int:
    """Run the Faust worker in this (main) thread until it stops; its exit status.

    0: stopped cleanly; :data:`EXIT_INVALID_RATIO`: the invalid-ratio guard
    stopped it; :data:`EXIT_BUG`: an agent failed; 1: Faust itself crashed.
    """
    from streams.app import WorkerFailed, create_app
    from streams.guard import InvalidRatioExceeded
    from streams.transport import Worker

    if stop.event.is_set():
        return 0
    failures: list[WorkerFailed] = []
    app = create_app(
        settings,
        metrics,
        on_failure=failures.append,
        live=live,
        on_summaries=summaries.set,
    )
    _tune_gc()

    async def forward_stop() -> None:
        # Runs inside the worker, whose loop now owns SIGTERM: re-raise a stop that
        # arrived from a thread (drain, sink failure) or before the worker started.
        if stop.event.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    app.timer(STOP_CHECK_S, name="exnet-stop")(forward_stop)

    def recovered(*args: Any, **kwargs: Any) -> None:
        consuming.set()

    # Once the tables are recovered and the streams resume, not when partitions are
    # assigned: a restart reads its changelogs first (97,000 records took 70-85 s on a
    # loaded machine), consuming nothing while readiness said it did.
    cast(Any, app.on_rebalance_complete).connect(recovered)  # mode's signal typing is narrow
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    def forward_at_once() -> None:
        # Faust starts its timers (forward_stop) only once the tables are recovered,
        # which at a restart took 30-50 s: a writer that died meanwhile left this
        # process processing for that long. The loop's own thread owns SIGTERM.
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(os.kill, os.getpid(), signal.SIGTERM)

    stop.forward = forward_at_once
    worker = Worker(
        app,
        loop=loop,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    # Faust's terminal spinner (its type allows None): when start-up ends it writes the
    # show-cursor escape to stdout whether or not that is a terminal, a stray `ESC[?25h`
    # in every log and in `make demo`'s output; exnet's own progress is its bar.
    worker.spinner = None
    worker.on_signal = stop.received
    clean = True
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        clean = exc.code in (0, None)
    except (Exception, asyncio.CancelledError) as exc:
        # mode re-raises the worker's crash reason once the loop is shut down (an
        # agent's error, or the cancellation of another agent it took down).
        log.debug("the stream worker crashed: %r", exc)
        clean = False
    finally:
        stop.forward = None
    if failures:
        if isinstance(failures[0].cause, InvalidRatioExceeded):
            log.critical("stopped without committing the batch: %s", failures[0].cause)
            return EXIT_INVALID_RATIO
        return EXIT_BUG
    return 0 if clean and worker.crash_reason is None else 1
