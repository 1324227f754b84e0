"""Logging: Kafka clients' repeated complaints, collapsed; their close race, dropped.

When a topic disappears or a broker is away, kafka-python and aiokafka log the
same line on every retry of a tight loop: a topic deleted under a running
``exnet up`` gave 143,000 WARNING lines in 20 s (``kafka.consumer.fetcher``:
"Received unknown topic or partition error in ListOffsets request ...").
:class:`RepeatFilter` lets each distinct line of theirs through once per
interval, and says with the next one how many it held back. Lines that differ
only in an object's address or a measured duration are the same line: on a
loaded 2-core machine kafka-python's I/O thread warns of each step over 0.1 s
(``Task <kafka.net.selector.Task object at 0x7f5be6a4a7d0> ran for 0.293s
(>0.100s threshold). It is blocking the event loop ...``), each line with another
address and duration: 131 of a sink log's 231 lines. Shown once a minute, not
dropped: the same warning without end, from a process making no progress, is how
kafka-python reports a tight loop stuck in its own I/O thread.

kafka-python (3.0.12) closes a client's sockets on the thread that calls
``close()`` while its own I/O thread may be reading them: that thread then
logs ``Error receiving network data closing socket`` with a traceback
(``'NoneType' object has no attribute 'recv'``) for a socket closed on purpose.
:class:`CloseRaceFilter` drops that one record; seen in ``make demo``'s log when
the writer stopped. It also drops ``Metadata refresh: failed Cancelled`` at ERROR
(``kafka.cluster``): a refresh in flight when its client was closed (a connection
closed on purpose fails its requests with ``Cancelled``; one lost, with its error).

Both clients log at ERROR what they retry by themselves when a broker goes away or
moves a coordinator (``Connection lost: KafkaConnectionError: ... ECONNREFUSED``,
``Heartbeat send request failed: ... Will retry.``, ``Group Coordinator Request
failed: [Error 15] GroupCoordinatorNotAvailableError`` at every first start): an
outside tester counted about 27 ERROR lines for each 10 s that a broker was down,
in a pipeline that lost nothing and needed nothing done. :class:`RetriedErrorFilter`
writes those at WARNING; an outage that lasts shows as exnet's own lines, its
readiness and its metrics (`docs/deploy.md`'s alerts), not as the clients' retries.

At ``EXNET_LOG_LEVEL=DEBUG`` kafka-python logs each client's whole configuration,
the SASL password in it (``Starting KafkaAdminClient with configuration: {...
'sasl_plain_password': '...'}``, an outside review's find). :class:`SecretFilter`
writes every secret the settings hold as ``***`` in every line printed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Final

__all__ = [
    "KAFKA_CLIENTS",
    "CloseRaceFilter",
    "RepeatFilter",
    "RetriedErrorFilter",
    "SecretFilter",
    "collapse_repeats",
    "demote_retried_errors",
    "drop_close_races",
    "hide_secrets",
]

#: The loggers whose repeated lines are collapsed: kafka-python's and aiokafka's.
KAFKA_CLIENTS: Final = ("kafka", "aiokafka")
#: Distinct lines remembered at most (then forgotten all at once: a line may then
#: pass once more within its interval).
_REMEMBERED: Final = 10_000
#: An object's default repr's address (``<kafka.net.selector.Task object at 0x7f5b...>``):
#: another object, the same line. Only after " at ": other hex numbers (a CRC, an error
#: code) may tell two errors apart.
_ADDRESS: Final = re.compile(r"(?<= at )0x[0-9a-fA-F]+\b")
#: A measured duration: a number with a fraction and a unit of time ("ran for 0.293s",
#: "took 1.204s", "(12.5 ms)", "(backoff 0.85 secs)": a retry's jittered backoff); kafka-python
#: prints them with %.2f, %.3f or %f. Whole numbers
#: stay: in these lines they are node ids, partitions, offsets, error codes and
#: configured timeouts ("timed out after 30000 ms"), which tell lines apart.
_DURATION: Final = re.compile(r"\b\d+\.\d+(?= ?(?:m?s|secs?|seconds?)\b)")


def _same_line(message: str) -> str:
    """``message`` as :class:`RepeatFilter` compares it: object addresses and measured
    durations replaced by ``0x?`` and ``?`` (``Task <... object at 0x?> ran for ?s
    (>?s threshold) ...``)."""
    return _DURATION.sub("?", _ADDRESS.sub("0x?", message))


class RepeatFilter(logging.Filter):
    """Passes a record of the ``loggers`` (and their children) unless the same line
    (logger, level and message as printed, its object addresses and measured durations
    aside: :func:`_same_line`) passed less than ``interval_s`` seconds ago; the first
    to pass after others were held back ends in ``(N more like this in the last S s,
    not shown)``. Other loggers' records always pass. Thread-safe (Kafka
    clients log from their own threads)."""

    def __init__(
        self,
        loggers: tuple[str, ...] = KAFKA_CLIENTS,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._loggers = loggers
        self._prefixes = tuple(f"{name}." for name in loggers)
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        #: line -> [when it last passed, records held back since]
        self._lines: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name not in self._loggers and not name.startswith(self._prefixes):
            return True
        # The line as printed: kafka-python's arguments include connection objects,
        # whose repr (their address) differs at each reconnection; some messages come
        # formatted already, with an object's address and a duration in them.
        line = (name, record.levelno, _same_line(record.getMessage()))
        now = self._clock()
        with self._lock:
            seen = self._lines.get(line)
            if seen is not None and now - seen[0] < self._interval_s:
                seen[1] += 1
                return False
            if len(self._lines) >= _REMEMBERED:
                self._lines.clear()
            self._lines[line] = [now, 0]
        if seen is not None and seen[1]:
            record.msg = (
                f"{record.getMessage()} ({int(seen[1])} more like this in the last "
                f"{now - seen[0]:.0f} s, not shown)"
            )
            record.args = None
        return True


def collapse_repeats(interval_s: float = 60.0) -> None:
    """Put a :class:`RepeatFilter` on each handler of the root logger (once each).

    On the handlers, not the Kafka loggers: what is printed is collapsed, while a
    handler put on a Kafka logger itself still sees every record
    (:class:`~exnet.settings.KafkaRefusals` reads why a login was refused there, at
    each try)."""
    _put_on_root_handlers(RepeatFilter, lambda: RepeatFilter(interval_s=interval_s))


class CloseRaceFilter(logging.Filter):
    """Drops kafka-python's ``Error receiving network data`` record when its transport
    (the record's first argument) was already closing: the socket was closed on
    purpose, by ``close()`` on another thread, under the client's I/O thread. The
    same record from a transport still open (a broker that went away) passes. Drops
    its ``Metadata refresh: failed`` record when the error is ``Cancelled`` (its
    client closed); with another error (a broker lost) it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.name == "kafka.cluster" and "Metadata refresh: failed" in str(record.msg):
            # Imported here: every command line puts this filter up, most use no Kafka
            # client (kafka-python's import: 0.12 s); a record of its own means it is loaded.
            from kafka.errors import Cancelled

            return not (args and isinstance(args[0], Cancelled))
        if record.name != "kafka.net.transport" or "Error receiving network data" not in str(
            record.msg
        ):
            return True
        is_closing = getattr(args[0], "is_closing", None) if args else None
        return not (callable(is_closing) and is_closing())


def drop_close_races() -> None:
    """Put a :class:`CloseRaceFilter` on each handler of the root logger (once each)."""
    _put_on_root_handlers(CloseRaceFilter, CloseRaceFilter)


#: What the Kafka clients' ERROR lines say when a broker is away, restarting or handing
#: over a group's coordinator: conditions both clients retry on their own.
_RETRIED_SIGNS: Final = (
    "KafkaConnectionError",
    "ECONNREFUSED",
    "Connect call failed",
    "NodeNotReadyError",
    "socket disconnected",
    "GroupCoordinatorNotAvailable",
    "NotCoordinator",
    "marking coordinator dead",
    "Heartbeat session expired",
    "Unable to update metadata",
    "StaleMetadata",  # a broker that left the cluster's metadata a moment ago
)


class RetriedErrorFilter(logging.Filter):
    """Writes at WARNING a Kafka client's ERROR record that names a condition the
    client retries (:data:`_RETRIED_SIGNS`): a broker away or a coordinator moving;
    and, in one line without its traceback, one whose exception is a lost connection
    (kafka-python's socket reads and writes, ``ConnectionResetError`` as a broker is
    killed). Any other ERROR of theirs stays an ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.ERROR or record.name.split(".", 1)[0] not in KAFKA_CLIENTS:
            return True
        if record.exc_info is None:
            message = record.getMessage()
            if any(sign in message for sign in _RETRIED_SIGNS):
                record.levelno, record.levelname = logging.WARNING, "WARNING"
            return True
        lost = record.exc_info[1]
        if isinstance(lost, ConnectionError):
            message = record.getMessage()
            cause = f"{type(lost).__name__}: {lost}"
            record.msg = message if str(lost) in message else f"{message} ({cause})"
            record.args, record.exc_info, record.exc_text = None, None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def demote_retried_errors() -> None:
    """Put a :class:`RetriedErrorFilter` on each handler of the root logger (once each)."""
    _put_on_root_handlers(RetriedErrorFilter, RetriedErrorFilter)


class SecretFilter(logging.Filter):
    """Writes each of ``secrets`` as ``***`` in a record's message (its arguments
    merged in first) and in its exception's text, so that no handler prints one."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first: a secret that holds another is hidden whole.
        self._secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        hidden = self._hide(message)
        if hidden != message:
            record.msg, record.args = hidden, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            hidden = self._hide(text)
            if hidden != text:
                record.exc_text, record.exc_info = hidden, None
        return True

    def _hide(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def hide_secrets(secrets: Iterable[str]) -> None:
    """Put a :class:`SecretFilter` for ``secrets`` on each handler of the root logger
    (replacing an earlier one: the settings may have been read again)."""
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, SecretFilter)]:
            handler.removeFilter(old)
        handler.addFilter(SecretFilter(secrets))


def _put_on_root_handlers(kind: type[logging.Filter], make: Callable[[], logging.Filter]) -> None:
    """A filter ``make`` gives on each handler of the root logger that has none of ``kind``."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, kind) for f in handler.filters):
            handler.addFilter(make())
