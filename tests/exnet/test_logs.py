"""The Kafka clients' repeated lines, collapsed."""

from __future__ import annotations

import logging
import sys

import pytest

from exnet.logs import (
    CloseRaceFilter,
    RepeatFilter,
    RetriedErrorFilter,
    collapse_repeats,
    demote_retried_errors,
    drop_close_races,
)
from exnet.runner import configure_logging
from exnet.settings import load_settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _record(message: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("kafka.cluster", level, __file__, 1, message, args, None)


def test_a_line_repeated_in_a_tight_loop_passes_once_per_interval_then_says_how_many() -> None:
    clock = Clock()
    repeats = RepeatFilter(interval_s=60.0, clock=clock)
    passed = []
    for step in range(10_000):  # 10,000 retries over 100 s
        clock.now = 100.0 + step / 100
        record = _record("Topic %s not found in cluster metadata", "exnet.session")
        if repeats.filter(record):
            passed.append(record.getMessage())
    assert passed == [
        "Topic exnet.session not found in cluster metadata",
        "Topic exnet.session not found in cluster metadata (5999 more like this in the last "
        "60 s, not shown)",
    ]


def test_other_lines_pass_their_own_way() -> None:
    repeats = RepeatFilter(interval_s=60.0, clock=Clock())
    assert repeats.filter(_record("Topic %s not found", "a"))
    assert repeats.filter(_record("Topic %s not found", "b"))  # other arguments
    assert repeats.filter(_record("Topic %s not found", "a", level=logging.ERROR))
    assert not repeats.filter(_record("Topic %s not found", "a"))


def test_a_line_not_repeated_within_the_interval_passes_unchanged() -> None:
    clock = Clock()
    repeats = RepeatFilter(interval_s=60.0, clock=clock)
    assert repeats.filter(_record("Unable connect to node %s", 1))
    clock.now += 61
    record = _record("Unable connect to node %s", 1)
    assert repeats.filter(record)
    assert record.getMessage() == "Unable connect to node 1"


def test_exnets_own_lines_always_pass() -> None:
    repeats = RepeatFilter(interval_s=60.0, clock=Clock())
    for _ in range(3):
        record = logging.LogRecord("exnet.runner", logging.WARNING, __file__, 1, "x", (), None)
        assert repeats.filter(record)


def test_printed_lines_collapse_while_a_handler_on_the_kafka_logger_sees_them_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    root, printed, refusals = logging.getLogger(), Keep(), Keep()
    fetcher = logging.getLogger("kafka.consumer.fetcher")
    # Whatever other tests left on the Kafka loggers (the CLIs silence them).
    monkeypatch.setattr(logging.getLogger("kafka"), "propagate", True)
    monkeypatch.setattr(fetcher, "disabled", False)
    level = fetcher.level
    fetcher.setLevel(logging.WARNING)  # (setLevel: loggers cache their effective level)
    root.addHandler(printed)
    fetcher.addHandler(refusals)  # as KafkaRefusals is put on "kafka"
    try:
        collapse_repeats()
        collapse_repeats()  # once per handler
        assert sum(isinstance(f, RepeatFilter) for f in printed.filters) == 1
        for _ in range(1000):
            fetcher.warning("Received unknown topic or partition error for %s", "t-0")
    finally:
        root.removeHandler(printed)
        fetcher.removeHandler(refusals)
        fetcher.setLevel(level)
    assert printed.lines == ["Received unknown topic or partition error for t-0"]
    assert len(refusals.lines) == 1000


class _Transport:
    """Stands for kafka-python's transport: what the record's first argument offers."""

    def __init__(self, closing: bool) -> None:
        self.closing = closing

    def is_closing(self) -> bool:
        return self.closing


def _receive_error(transport: _Transport) -> logging.LogRecord:
    try:
        None.recv(4096)  # type: ignore[attr-defined]  # what kafka-python hits
    except AttributeError:
        exc_info = sys.exc_info()
    return logging.LogRecord(
        "kafka.net.transport",
        logging.ERROR,
        __file__,
        1,
        "%s: Error receiving network data closing socket",
        (transport,),
        exc_info,
    )


def test_the_close_race_traceback_is_dropped_only_for_a_transport_closed_on_purpose() -> None:
    races = CloseRaceFilter()
    assert not races.filter(_receive_error(_Transport(closing=True)))
    assert races.filter(_receive_error(_Transport(closing=False)))  # a broker went away
    other = logging.LogRecord(
        "kafka.net.transport", logging.ERROR, __file__, 1, "%s: socket disconnected", ("t",), None
    )
    assert races.filter(other)


def test_drop_close_races_puts_one_filter_on_each_printing_handler() -> None:
    root, printed = logging.getLogger(), logging.NullHandler()
    root.addHandler(printed)
    try:
        drop_close_races()
        drop_close_races()
    finally:
        root.removeHandler(printed)
    assert sum(isinstance(f, CloseRaceFilter) for f in printed.filters) == 1


@pytest.mark.parametrize(
    ("name", "message", "args"),
    [  # lines an outside tester's broker kills gave, at ERROR, in a run that lost nothing
        ("kafka.net.manager", "Connection failed: %s", ("KafkaConnectionError: 111 ECONNREFUSED",)),
        ("kafka.net.transport", "%s: socket disconnected", ("<KafkaTCPTransport>",)),
        (
            "aiokafka.consumer.group_coordinator",
            "Group Coordinator Request failed: %s",
            ("[Error 15] GroupCoordinatorNotAvailableError",),
        ),
        (
            "aiokafka.consumer.group_coordinator",
            "Heartbeat session expired - marking coordinator dead",
            (),
        ),
        ("aiokafka", "Unable to update metadata from %s", ([1],)),
        ("aiokafka", "Unable connect to node with id %s: %s", (1, "Connect call failed")),
        (  # every rolling restart of a 3-node cluster, an outside operator's run
            "aiokafka",
            "Unable connect to node with id %s: %s",
            (2, "StaleMetadata: Broker id 2 not in current metadata"),
        ),
    ],
)
def test_a_kafka_clients_error_for_what_it_retries_is_written_as_a_warning(
    name: str, message: str, args: tuple[object, ...]
) -> None:
    record = logging.LogRecord(name, logging.ERROR, __file__, 1, message, args, None)
    assert RetriedErrorFilter().filter(record)
    assert (record.levelno, record.levelname) == (logging.WARNING, "WARNING")


@pytest.mark.parametrize(
    ("message", "printed"),
    [  # kafka-python's socket reads and writes as a broker is killed, with a traceback each
        (
            "%s: Error receiving network data closing socket",
            "<t>: Error receiving network data closing socket (ConnectionResetError: "
            "[Errno 104] Connection reset by peer)",
        ),
        (
            "%s: Error sending request data: [Errno 104] Connection reset by peer",
            "<t>: Error sending request data: [Errno 104] Connection reset by peer",
        ),
    ],
)
def test_a_lost_connections_traceback_is_one_warning_line(message: str, printed: str) -> None:
    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError:
        record = logging.LogRecord(
            "kafka.net.transport", logging.ERROR, __file__, 1, message, ("<t>",), sys.exc_info()
        )
    assert RetriedErrorFilter().filter(record)
    assert (record.levelname, record.getMessage()) == ("WARNING", printed)
    assert record.exc_info is None and record.exc_text is None


def test_other_errors_stay_errors() -> None:
    demoted = RetriedErrorFilter()
    fatal = logging.LogRecord(
        "aiokafka.consumer.group_coordinator",
        logging.ERROR,
        __file__,
        1,
        "Attempt to join group failed due to fatal error: %s",
        ("GroupAuthorizationFailedError",),
        None,
    )
    ours = logging.LogRecord(
        "exnet.runner", logging.ERROR, __file__, 1, "lost: KafkaConnectionError", (), None
    )
    try:  # a bug of theirs, not a connection: its traceback matters
        raise ValueError("ECONNREFUSED")
    except ValueError:
        traced = logging.LogRecord(
            "aiokafka", logging.ERROR, __file__, 1, "ECONNREFUSED", (), sys.exc_info()
        )
    for record in (fatal, ours, traced):
        assert demoted.filter(record)
        assert record.levelno == logging.ERROR, record.getMessage()


def test_demote_retried_errors_puts_one_filter_on_each_printing_handler() -> None:
    root, printed = logging.getLogger(), logging.NullHandler()
    root.addHandler(printed)
    try:
        demote_retried_errors()
        demote_retried_errors()
    finally:
        root.removeHandler(printed)
    assert sum(isinstance(f, RetriedErrorFilter) for f in printed.filters) == 1


def test_lines_printed_alike_collapse_whatever_objects_their_arguments_are() -> None:
    """kafka-python logs each reconnection's connection object, printed alike: 20 lines a
    minute of "Connection lost: ... ECONNREFUSED" on one broker's loss."""

    class Connection:  # a new one at each reconnection: repr differs, str does not
        def __str__(self) -> str:
            return "<KafkaConnection node_id=1 (disconnected)>"

    repeats = RepeatFilter(interval_s=60.0, clock=Clock())
    passed = [
        repeats.filter(
            logging.LogRecord(
                "kafka.net.connection",
                logging.ERROR,
                __file__,
                1,
                "%s: Connection lost: %s",
                (Connection(), "111 ECONNREFUSED"),
                None,
            )
        )
        for _ in range(20)
    ]
    assert passed == [True] + [False] * 19


def test_a_metadata_refresh_cancelled_by_close_is_dropped_and_a_lost_broker_s_is_not() -> None:
    from kafka.errors import Cancelled, KafkaConnectionError

    def refresh_failed(error: Exception) -> logging.LogRecord:
        return logging.LogRecord(
            "kafka.cluster",
            logging.ERROR,
            __file__,
            1,
            "Metadata refresh: failed %s",
            (error,),
            None,
        )

    races = CloseRaceFilter()
    assert not races.filter(refresh_failed(Cancelled()))
    assert races.filter(refresh_failed(KafkaConnectionError("connection refused")))


def _slow_task(address: str, seconds: float) -> logging.LogRecord:
    """kafka-python's slow-step warning, formatted as its selector formats it (no args)."""
    message = (
        f"Task <kafka.net.selector.Task object at {address}> ran for {seconds:.3f}s "
        "(>0.100s threshold). It is blocking the event loop -- likely a tight sync loop "
        "inside a coroutine. Other pollers will time out."
    )
    return logging.LogRecord("kafka.net.selector", logging.WARNING, __file__, 1, message, (), None)


def test_slow_task_warnings_collapse_whatever_task_and_duration_they_name() -> None:
    """131 of a loaded sink's 231 log lines: each with another task address and duration."""
    clock = Clock()
    repeats = RepeatFilter(interval_s=60.0, clock=clock)
    passed = []
    for step in range(131):  # one every 0.5 s
        clock.now = 100.0 + step / 2
        record = _slow_task(f"0x7f5be6a{step:05x}", 0.1 + step / 1000)
        if repeats.filter(record):
            passed.append(record.getMessage())
    assert len(passed) == 2
    assert passed[0].startswith("Task <kafka.net.selector.Task object at 0x7f5be6a00000> ran for")
    assert passed[1].endswith("(119 more like this in the last 60 s, not shown)")


def test_backoff_warnings_collapse_whatever_jittered_delay_they_name() -> None:
    """kafka-python's lines while the broker is down, each with another random backoff:
    124 a minute passed until 2026-12-05 ("secs" was not read as a unit; an outside
    reviewer's find)."""
    repeats = RepeatFilter(interval_s=60.0, clock=Clock())
    passed = []
    for step in range(60):
        delay = 0.5 + step / 97
        for message in (  # as kafka-python logs them: the format and its arguments
            "Bootstrap bootstrap-0 not ready; waiting %.2f secs",
            "Bootstrap connection to bootstrap-0 failed: refused (backoff %.2f secs)",
            "Bootstrap metadata response has no brokers. Retrying in %.2f secs.",
        ):
            record = logging.LogRecord(
                "kafka.net.manager", logging.WARNING, __file__, 1, message, (delay,), None
            )
            if repeats.filter(record):
                passed.append(record.getMessage())
    assert len(passed) == 3, passed


def test_lines_differing_in_other_numbers_stay_apart() -> None:
    """Only addresses of objects and durations with a fraction are ignored: ids, offsets,
    whole-number timeouts and other hex values (a CRC) still tell lines apart."""
    repeats = RepeatFilter(interval_s=60.0, clock=Clock())
    for message in (
        "Fetch offset 12 is out of range for partition 3",
        "Fetch offset 13 is out of range for partition 3",
        "Fetch offset 12 is out of range for partition 4",
        "Request timed out after 30000 ms",
        "Request timed out after 40000 ms",
        "Record batch CRC 0x1f2e3d4c does not match",
        "Record batch CRC 0x5a6b7c8d does not match",
    ):
        assert repeats.filter(_record(message)), message
    assert not repeats.filter(_record("Request timed out after 30000 ms"))


def test_no_printed_line_holds_a_password_the_settings_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At DEBUG kafka-python logs each client's whole configuration, the SASL password
    in it (an outside review read it in `exnet up`'s log)."""

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.setFormatter(logging.Formatter("%(message)s"))
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(self.format(record))

    settings = load_settings(
        kafka_password="Top/Secret-PW",
        clickhouse_url="http://writer:Zm9v%2FYmFy@clickhouse.example:8123",
        log_level="DEBUG",
    )
    root, printed = logging.getLogger(), Keep()
    admin = logging.getLogger("kafka.admin.client")
    monkeypatch.setattr(logging.getLogger("kafka"), "propagate", True)
    monkeypatch.setattr(admin, "disabled", False)
    level, admin_level = root.level, admin.level
    root.addHandler(printed)
    try:
        configure_logging(settings)
        admin.setLevel(logging.DEBUG)
        config = {"sasl_plain_username": "platform", "sasl_plain_password": "Top/Secret-PW"}
        admin.debug("Starting KafkaAdminClient with configuration: %s", config)
        try:
            raise ValueError("login refused for http://writer:Zm9v%2FYmFy@h (Zm9v/YmFy)")
        except ValueError:
            logging.getLogger("exnet.runner").exception("cannot reach ClickHouse")
    finally:
        root.removeHandler(printed)
        root.setLevel(level)
        admin.setLevel(admin_level)
    text = "\n".join(printed.lines)
    assert "sasl_plain_password': '***'" in text
    assert "Top/Secret-PW" not in text and "Zm9v" not in text
    assert "cannot reach ClickHouse" in text


def test_every_command_drops_a_metadata_refresh_its_own_close_cancelled() -> None:
    """`exnet rejects --original` printed ``ERROR kafka.cluster: Metadata refresh: failed
    Cancelled`` over its right answer (an outside check): only `exnet up` had the filter."""
    import subprocess

    command = (
        "import logging, sys\n"
        "from kafka.errors import Cancelled, KafkaConnectionError\n"
        "from exnet import cli\n"
        "def app(standalone_mode):\n"
        "    log = logging.getLogger('kafka.cluster')\n"
        "    log.error('Metadata refresh: failed %s', Cancelled())\n"
        "    log.error('Metadata refresh: failed %s', KafkaConnectionError('broker lost'))\n"
        "    return 0\n"
        "cli.app = app\n"
        "cli._register_all = lambda: None\n"
        "sys.argv = ['exnet']\n"
        "cli.main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", command], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Cancelled" not in done.stderr
    assert "Metadata refresh: failed KafkaConnectionError: broker lost" in done.stderr
